"""Orchestration: launchers (local processes, Batch AI, Azure Batch), status, drain measurement,
results export and the scale-tier benchmark."""
