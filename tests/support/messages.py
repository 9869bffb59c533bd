"""Send batch messages as the producer would: each run's manifest first, then the messages.

Consumers take a message only for a run with a manifest that lists it (docs/security.md); tests
that build messages by hand use `send_batches` so their runs are recorded like real ones.
"""

from __future__ import annotations

from workpool.errors import NotFoundError
from workpool.messages import BatchMessage
from workpool.queue import WorkQueue, open_queue
from workpool.runs import Manifest, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

RUN_FIELDS = ("source", "task", "model", "labels")


def record_runs(settings: Settings, *messages: BatchMessage) -> None:
    """Write (or extend) the manifest of every run the messages belong to."""
    store = open_result_store(settings)
    store.ensure()
    runs = RunStore(store)
    by_run: dict[str, list[BatchMessage]] = {}
    for message in messages:
        by_run.setdefault(message.run_id, []).append(message)
    for run_id, batch in by_run.items():
        first = batch[0]
        for message in batch:
            for name in RUN_FIELDS:
                if getattr(message, name) != getattr(first, name):
                    raise ValueError(f"run {run_id}: batches disagree on {name}; give each its own run id")
        try:
            batches = dict(runs.read_manifest(run_id).batches)
        except NotFoundError:
            batches = {}
        batches.update({m.batch_id: list(m.images) for m in batch})
        runs.write_manifest(
            Manifest(
                run_id=run_id,
                **{name: getattr(first, name) for name in RUN_FIELDS},
                batch_size=max(len(images) for images in batches.values()),
                queue=settings.queue,
                images=sum(len(images) for images in batches.values()),
                batches=batches,
            )
        )


def send_batches(settings: Settings, *messages: BatchMessage, queue: WorkQueue | None = None) -> None:
    """Record the messages' runs, then send them (on `queue`, else the settings' queue, created)."""
    record_runs(settings, *messages)
    if queue is not None:
        queue.send([m.encode() for m in messages])
        return
    with open_queue(settings) as opened:
        opened.create()
        opened.send([m.encode() for m in messages])
