"""The drain report of a run, and waiting for the drain.

The drain wall time is measured from the batch records, not from a stopwatch in this process:
first `dequeued_at` to last `acked_at` over every acked batch of the run. So `wait` may start
late, or run on another machine, and still reports the time the pool actually took.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestration.pool_settings import apply_hint
from orchestration.reports.html import fields_html
from orchestration.reports.progress import RunProgress, RunTracker
from workpool.cli import plural
from workpool.errors import NotFoundError, WorkpoolError
from workpool.queue import WorkQueue
from workpool.retry import RetryPolicy, retry_transient
from workpool.runs import RunStore, read_concurrently

# With the queue empty (in-flight included) and batches still pending, how long to keep looking
# before calling them lost: covers a producer still sending and Azure's approximate message
# count catching up.
SETTLE_S = 15.0
# Once the queue is empty the acks are made, and each consumer writes its timing record right
# after its ack: this long for the last records before reporting the run without them.
RECORD_GRACE_S = 3.0
# A storage blink during a long wait costs a pause, not the wait: each look is retried with the
# jittered back-off of workpool/retry.py for up to 5 minutes of outage.
LOOK_POLICY = RetryPolicy(first_delay_s=1.0, max_delay_s=30.0, give_up_after_s=300.0)


@dataclass
class DrainReport:
    run_id: str
    images: int
    images_ok: int
    images_failed: int
    batches: int
    batches_done: int
    batches_poisoned: int
    drain_wall_s: float
    images_per_s: float
    first_dequeued_at: datetime | None
    last_acked_at: datetime | None
    workers: dict[str, int] = field(default_factory=dict)  # worker id → images
    worker_batches: dict[str, int] = field(default_factory=dict)  # worker id → batches
    failures: dict[str, int] = field(default_factory=dict)  # reason → images
    missing_batches: list[str] = field(default_factory=list)  # neither acked nor poisoned
    poisoned_batches: dict[str, str] = field(default_factory=dict)  # batch id → poison reason
    cancelled_at: datetime | None = None  # the run was cancelled (`orchestration cancel`)

    @property
    def ok(self) -> bool:
        return self.batches_poisoned == 0 and not self.missing_batches and self.cancelled_at is None

    @property
    def wall_s(self) -> float:
        """The drain wall time (first dequeue → last ack), in seconds."""
        return self.drain_wall_s

    def _repr_html_(self) -> str:
        return fields_html(f"Run {self.run_id}: drain report", self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "images": self.images,
            "images_ok": self.images_ok,
            "images_failed": self.images_failed,
            "batches": self.batches,
            "batches_done": self.batches_done,
            "batches_poisoned": self.batches_poisoned,
            "drain_wall_s": round(self.drain_wall_s, 3),
            "images_per_s": round(self.images_per_s, 3),
            "first_dequeued_at": self.first_dequeued_at.isoformat() if self.first_dequeued_at else None,
            "last_acked_at": self.last_acked_at.isoformat() if self.last_acked_at else None,
            "workers": dict(sorted(self.workers.items())),
            "worker_batches": dict(sorted(self.worker_batches.items())),
            "failures": dict(sorted(self.failures.items(), key=lambda kv: (-kv[1], kv[0]))),
            "missing_batches": self.missing_batches,
            "poisoned_batches": dict(sorted(self.poisoned_batches.items())),
            "cancelled_at": self.cancelled_at.isoformat() if self.cancelled_at else None,
        }

    def render(self) -> str:
        lines = [
            f"Run {self.run_id}: {plural(self.images, 'image')} in {plural(self.batches, 'batch')}"
            + (f" (cancelled at {self.cancelled_at:%Y-%m-%d %H:%M:%S} UTC)" if self.cancelled_at else ""),
            f"  drain wall time  {self.drain_wall_s:.1f} s (first dequeue → last ack)",
            f"  throughput       {self.images_per_s:.2f} images/s",
            f"  images           {self.images_ok} ok, {self.images_failed} failed",
            f"  batches          {self.batches_done} done, {self.batches_poisoned} poisoned"
            + (f", {len(self.missing_batches)} missing" if self.missing_batches else "")
            + (f", {self.batches - self.batches_done - self.batches_poisoned} cancelled" if self.cancelled_at else ""),
        ]
        if self.workers:
            lines.append("  per worker:")
            width = max(len(w) for w in self.workers)
            for worker in sorted(self.workers):
                images, batches = self.workers[worker], self.worker_batches.get(worker, 0)
                lines.append(f"    {worker:<{width}}  {images:>7} images  {plural(batches, 'batch'):>13}")
        if self.failures:
            lines.append("  failures by reason (images):")
            for reason, count in sorted(self.failures.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"    {count:>7}  {reason}")
        if self.poisoned_batches:
            lines.append(f"  poisoned batches (fix the cause, then `producer requeue --run {self.run_id} --failed`):")
            for batch_id, reason in sorted(self.poisoned_batches.items())[:10]:
                lines.append(f"    {batch_id}  {reason}")
            hints = {h for reason in self.poisoned_batches.values() if (h := apply_hint(reason, self.run_id))}
            lines += [f"  note: {hint}" for hint in sorted(hints)]
            if len(self.poisoned_batches) > 10:
                lines.append(f"    … and {len(self.poisoned_batches) - 10} more (--json lists them all)")
        if self.missing_batches:
            shown = ", ".join(self.missing_batches[:10]) + (" …" if len(self.missing_batches) > 10 else "")
            lines.append(f"  missing: {shown}; resend them with `producer requeue --run {self.run_id} --missing`")
        return "\n".join(lines)


def drain_report(tracker: RunTracker, missing: list[str] | None = None) -> DrainReport:
    """The report from the run's state (the tracker is refreshed first)."""
    progress = tracker.refresh()
    state = tracker.state
    records = list(state.records.values())
    first = min((r.dequeued_at for r in records), default=None)
    last = max((r.acked_at for r in records), default=None)
    wall_s = (last - first).total_seconds() if first and last else 0.0
    scored = sum(r.images for r in records)
    workers: Counter[str] = Counter()
    worker_batches: Counter[str] = Counter()
    for status in state.done.values():
        # Credited from the timing record, or from the results when the record is missing.
        worker = status.record.worker if status.record else status.counts.worker if status.counts else None
        images = status.record.images if status.record else status.counts.images if status.counts else 0
        if worker is not None:
            workers[worker] += images
            worker_batches[worker] += 1
    return DrainReport(
        run_id=tracker.run_id,
        images=progress.images,
        images_ok=progress.images_ok,
        images_failed=progress.images_failed,
        batches=progress.batches,
        batches_done=progress.batches_done,
        batches_poisoned=progress.batches_poisoned,
        drain_wall_s=wall_s,
        images_per_s=scored / wall_s if wall_s > 0 else 0.0,
        first_dequeued_at=first,
        last_acked_at=last,
        workers=dict(workers),
        worker_batches=dict(worker_batches),
        failures=failure_reasons(tracker),
        missing_batches=missing or [],
        poisoned_batches={b: s.poison.reason if s.poison else "unknown" for b, s in state.poisoned.items()},
        cancelled_at=state.cancelled.cancelled_at if state.cancelled else None,
    )


def failure_reasons(tracker: RunTracker) -> dict[str, int]:
    """Failed images by reason: error rows of done batches (read several at a time), and every
    image of a poisoned one."""
    state = tracker.state
    reasons: Counter[str] = Counter()
    failing = [b for b, s in state.done.items() if s.counts is None or s.counts.images_failed]

    def errors_of(batch_id: str) -> list[str] | None:
        try:
            rows = tracker.runs.read_results(tracker.run_id, batch_id)
        except NotFoundError:
            return None
        return [row.error or "unknown error" for row in rows if row.status == "error"]

    for batch_id, errors in zip(failing, read_concurrently(errors_of, failing), strict=True):
        if errors is None:
            counts = state.batches[batch_id].counts
            reasons["results missing for a done batch"] += counts.images_failed if counts else 0
        else:
            reasons.update(errors)
    for batch_id in state.poisoned:
        report = state.batches[batch_id].poison
        reason = report.reason if report else "unknown"
        reasons[f"poisoned: {reason}"] += len(state.manifest.batches.get(batch_id, []))
    return dict(reasons)


class WaitTimeout(WorkpoolError):
    """`wait --timeout-s` ran out before the run drained."""


def messages_on(queue: WorkQueue) -> int:
    """The queue's messages (in flight included), riding out a storage blink (`LOOK_POLICY`)."""
    return retry_transient(lambda: queue.depth().messages, f"reading queue {queue.name}", LOOK_POLICY)


def wait_for_drain(
    runs: RunStore,
    queue: WorkQueue,
    run_id: str,
    *,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
    settle_s: float = SETTLE_S,
    on_progress: Callable[[RunProgress], None] | None = None,
) -> DrainReport:
    """Block until every batch of the run is done or poisoned (or the run is cancelled), then report.

    The queue may carry other runs, so completion is read from the run's own state. The
    queue's depth tells a different story: once it holds nothing at all (in-flight included)
    while batches are still pending, they cannot arrive any more; they are reported missing,
    after `settle_s`, instead of waiting forever.

    A batch is done once its results are written, a moment before its ack and timing record:
    when the last batches are done without a record, the report waits for their records (for
    `RECORD_GRACE_S` once the queue is empty, at most `settle_s` in all), then goes without them
    (a consumer that died between its ack and its record leaves a batch without timing, not
    unfinished).
    """
    tracker = retry_transient(lambda: RunTracker(runs, run_id), f"reading run {run_id}", LOOK_POLICY)

    def queued() -> int:
        return messages_on(queue)

    started = time.monotonic()
    empty_since: float | None = None
    complete_since: float | None = None  # every batch done or poisoned, some done without a record
    drained_since: float | None = None  # ... and the queue empty: the acks are all made
    while True:
        progress = retry_transient(tracker.refresh, f"reading run {run_id}", LOOK_POLICY)
        if on_progress is not None:
            on_progress(progress)
        if progress.state == "cancelled":
            return drain_report(tracker)  # nothing more will come: its waiting batches are off the queue
        if progress.complete:
            if len(tracker.state.done) == len(tracker.state.records):
                return drain_report(tracker)
            now = time.monotonic()
            complete_since = complete_since if complete_since is not None else now
            if queued():
                drained_since = None
            elif drained_since is None:
                drained_since = now
            if now - complete_since >= settle_s or (
                drained_since is not None and now - drained_since >= min(RECORD_GRACE_S, settle_s)
            ):
                return drain_report(tracker)
        elif queued() == 0:
            empty_since = empty_since if empty_since is not None else time.monotonic()
            if time.monotonic() - empty_since >= settle_s:
                return drain_report(tracker, missing=tracker.unfinished())
        else:
            empty_since = None
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise WaitTimeout(
                f"run {run_id} not drained after {timeout_s:.0f} s: "
                f"{progress.batches_finished}/{progress.batches} batches finished"
            )
        time.sleep(poll_s)
