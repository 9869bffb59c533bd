"""The live dashboard: `orchestration dashboard` (app.py: routes and access; feed.py: the data)."""
