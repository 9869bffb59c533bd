"""`producer requeue`: send a run's work again, from the poison queue or from its manifest.

`--failed` walks `<queue>-poison` once. Each record of this run goes back to the work queue as
its original body, so consumers see a fresh message (dequeue count starts over), and only then
is it deleted from poison: a crash in between leaves a duplicate, never a loss. Records of other
runs (and unreadable ones) are held under a lease while the walk goes on, so they are not seen
twice, and released at the end, visible again at once and otherwise untouched.

`--missing` re-sends every manifest batch that is not done (no results written: pending or
poisoned, by the run layout's one rule, `RunStore.run_state`): for messages lost or expired.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from producer.plan import spec_of
from producer.progress import progress
from producer.sending import SendIncomplete, send_all
from producer.validate import check_run_id
from workpool.errors import LeaseLostError, MessageError, NotFoundError, UsageError, WorkpoolError
from workpool.messages import BatchMessage
from workpool.queue import MAX_RECEIVE, PoisonRecord, Received, WorkQueue, open_queue
from workpool.retry import retry_transient
from workpool.runs import Manifest, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

log = logging.getLogger(__name__)

# Long enough to walk a large poison queue once; if it runs out, held records simply come back.
POISON_LEASE_S = 600


@dataclass
class RequeueSummary:
    run_id: str
    mode: Literal["failed", "missing"]
    queue: str
    requeued: int = 0  # batches sent again
    images: int = 0  # images in those batches
    batch_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # --failed
    left_in_poison: int = 0  # other runs' and unreadable records, released untouched
    duplicates_dropped: int = 0  # extra poison records of a batch already requeued
    # --missing
    batches: int = 0  # batches in the manifest
    with_results: int = 0

    def to_json(self) -> dict[str, Any]:
        common = ["run_id", "mode", "queue", "requeued", "images", "batch_ids", "seconds"]
        extra = ["left_in_poison", "duplicates_dropped"] if self.mode == "failed" else ["batches", "with_results"]
        return {key: getattr(self, key) for key in common + extra}


def _open_run(settings: Settings, run_id: str) -> tuple[RunStore, Manifest]:
    runs = RunStore(open_result_store(settings))
    try:
        manifest = runs.read_manifest(check_run_id(run_id))
    except NotFoundError as exc:
        raise UsageError(f"{exc}; nothing requeued") from None
    if manifest.queue != settings.queue:
        log.warning(
            "run %s was enqueued on queue %s (settings say %s); requeueing on %s",
            run_id,
            manifest.queue,
            settings.queue,
            manifest.queue,
        )
    return runs, manifest


def _run_queue(settings: Settings, manifest: Manifest) -> WorkQueue:
    return open_queue(settings, manifest.queue)


def requeue_failed(settings: Settings, run_id: str, *, lease_s: int = POISON_LEASE_S) -> RequeueSummary:
    started = time.monotonic()
    runs, manifest = _open_run(settings, run_id)
    summary = RequeueSummary(run_id=run_id, mode="failed", queue=manifest.queue)
    with _run_queue(settings, manifest) as queue, queue.poison() as poison:
        held: dict[str, Received] = {}  # other runs' records, by message id, released at the end
        try:
            while True:
                received = retry_transient(
                    functools.partial(poison.receive, MAX_RECEIVE, visibility_timeout_s=lease_s),
                    f"receive from {poison.name}",
                )
                # Nothing visible left, or only records we already hold (their lease ran out): done.
                if not received or all(m.id in held for m in received):
                    held.update((m.id, m) for m in received)
                    break
                for message in received:
                    batch = _batch_of(message.body)
                    if batch is None or batch.run_id != run_id:
                        held[message.id] = message
                        continue
                    if batch.batch_id in summary.batch_ids:
                        summary.duplicates_dropped += 1
                    else:
                        original = PoisonRecord.decode(message.body).body
                        retry_transient(
                            functools.partial(queue.send, [original], ttl_s=settings.message_ttl_s),
                            f"send batch {batch.batch_id} to {queue.name}",
                        )
                        summary.batch_ids.append(batch.batch_id)
                        summary.images += len(batch.images)
                    _ack(poison, message)
                    retry_transient(
                        functools.partial(runs.delete_poison, run_id, batch.batch_id),
                        f"delete poison report of {batch.batch_id}",
                    )
        finally:
            summary.left_in_poison = _release_all(poison, held.values())
    summary.requeued = len(summary.batch_ids)
    summary.batch_ids.sort()
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def requeue_missing(settings: Settings, run_id: str, *, progress_bar: bool | None = None) -> RequeueSummary:
    started = time.monotonic()
    runs, manifest = _open_run(settings, run_id)
    state = runs.run_state(run_id, manifest, timing=False)
    missing = [batch_id for batch_id, status in state.batches.items() if status.state != "done"]
    summary = RequeueSummary(
        run_id=run_id,
        mode="missing",
        queue=manifest.queue,
        batches=len(manifest.batches),
        with_results=len(manifest.batches) - len(missing),
        batch_ids=missing,
        requeued=len(missing),
        images=sum(len(manifest.batches[b]) for b in missing),
    )
    if missing:
        log.warning(
            "re-sending %d of %d batches of run %s that have no result yet; batches still in flight "
            "may be scored twice, which is harmless (results are written once per batch)",
            len(missing),
            len(manifest.batches),
            run_id,
        )
        spec = spec_of(manifest)
        bodies = [spec.message(batch_id, manifest.batches[batch_id]).encode() for batch_id in missing]
        with _run_queue(settings, manifest) as queue:
            retry_transient(queue.create, f"create queue {queue.name}")
            try:
                with progress(len(bodies), f"requeue {run_id}", bar=progress_bar) as advance:
                    send_all(queue, bodies, ttl_s=settings.message_ttl_s, on_sent=advance)
            except SendIncomplete as exc:
                raise WorkpoolError(f"run {run_id}: {exc}; run the same command again to send the rest") from None
    summary.seconds = round(time.monotonic() - started, 3)
    return summary


def _batch_of(poison_body: str) -> BatchMessage | None:
    """The batch a poison record holds, or None when the record or its body cannot be read."""
    try:
        return BatchMessage.decode(PoisonRecord.decode(poison_body).body)
    except (MessageError, ValueError, KeyError, TypeError):
        return None


def _ack(poison: WorkQueue, message: Received) -> None:
    try:
        retry_transient(functools.partial(poison.ack, message), f"delete record from {poison.name}")
    except LeaseLostError:
        # Our lease ran out and the record may be seen again: a duplicate send, never a loss.
        log.warning("poison record %s was no longer held when deleted; its batch may be sent twice", message.id)


def _release_all(poison: WorkQueue, held: Iterable[Received]) -> int:
    count = 0
    for message in held:
        count += 1
        try:
            retry_transient(functools.partial(poison.release, message), f"release record on {poison.name}")
        except WorkpoolError as exc:
            # It comes back by itself when its lease ends; nothing is lost.
            log.warning(
                "poison record %s not released (%s); visible again within %d s", message.id, exc, POISON_LEASE_S
            )
    return count
