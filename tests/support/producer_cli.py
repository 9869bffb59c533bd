"""Helpers for the producer tests: run the real CLI, and look at what it left on the backend.

Messages on Azurite are read with a plain `azure.storage.queue.QueueClient`, not workpool's
queue code, so the tests prove that any Storage Queue client can read what the producer sends.
"""

from __future__ import annotations

from pathlib import Path

from azure.storage.queue import QueueClient

from tests.support.cli import Outcome, run_cli
from workpool.errors import NotFoundError
from workpool.messages import BatchMessage
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store


def producer(settings: Settings, *args: str, cwd: Path | None = None, timeout_s: float = 120) -> Outcome:
    """Run `python -m producer ARGS` in a child process on the settings' backend."""
    return run_cli("producer", settings, *args, cwd=cwd, timeout_s=timeout_s)


def drain_bodies(settings: Settings, queue_name: str | None = None) -> list[str]:
    """Every message body on the queue, read (and deleted) with a plain client of the backend."""
    name = queue_name or settings.queue
    if settings.connection_string is not None:
        client = QueueClient.from_connection_string(settings.connection_string.get_secret_value(), name)
        from_azure: list[str] = []
        with client:
            while True:
                page = list(next(client.receive_messages(messages_per_page=32, visibility_timeout=300).by_page(), []))
                if not page:
                    return from_azure
                for message in page:
                    from_azure.append(str(message.content))
                    client.delete_message(message)
    with open_queue(settings, name) as queue:
        embedded: list[str] = []
        while received := queue.receive(32, visibility_timeout_s=300):
            for leased in received:
                embedded.append(leased.body)
                queue.ack(leased)
        return embedded


def drain_messages(settings: Settings) -> list[BatchMessage]:
    return [BatchMessage.decode(body) for body in drain_bodies(settings)]


def queue_depth(settings: Settings) -> int:
    """Messages on the work queue; a queue that was never created holds none."""
    try:
        with open_queue(settings) as queue:
            return queue.depth().messages
    except NotFoundError:
        return 0


def recorded_runs(settings: Settings) -> list[str]:
    """Runs with a manifest in the result store; a store that was never created holds none."""
    try:
        return RunStore(open_result_store(settings)).list_runs()
    except NotFoundError:
        return []
