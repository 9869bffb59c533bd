"""Work queues: the interface and a factory that picks the backend from the settings."""

from __future__ import annotations

from workpool.queue.base import MAX_RECEIVE, Depth, PoisonRecord, Received, Removal, WorkQueue
from workpool.settings import Settings

__all__ = ["MAX_RECEIVE", "Depth", "PoisonRecord", "Received", "Removal", "WorkQueue", "open_queue"]


def open_queue(settings: Settings, name: str | None = None) -> WorkQueue:
    """The configured work queue (Azure when storage credentials are set, else embedded, or the
    in-memory one a test mounted on the home: `workpool.memory`)."""
    name = name or settings.queue
    if settings.uses_azure_storage:
        from workpool.azure_clients import queue_service
        from workpool.queue.azure import AzureQueue

        return AzureQueue(queue_service(settings), name)
    from workpool.memory import mounted_at

    if (memory := mounted_at(settings.home)) is not None:
        return memory.queues.queue(name)
    from workpool.queue.embedded import EmbeddedQueue
    from workpool.storage.local import ensure_home

    return EmbeddedQueue(ensure_home(settings.home) / "queue.sqlite3", name)
