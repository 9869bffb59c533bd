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

from orchestration.progress import RunProgress, RunTracker
from workpool.errors import NotFoundError, WorkpoolError
from workpool.queue import WorkQueue
from workpool.runs import RunStore

# With the queue empty (in-flight included) and batches still unaccounted for, how long to keep
# looking before calling them lost: covers a producer still sending, a consumer between its ack
# and its timing record, and Azure's approximate message count catching up.
SETTLE_S = 15.0


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

    @property
    def ok(self) -> bool:
        return self.batches_poisoned == 0 and not self.missing_batches

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
        }

    def render(self) -> str:
        lines = [
            f"Run {self.run_id}: {self.images} images in {self.batches} batches",
            f"  drain wall time  {self.drain_wall_s:.1f} s (first dequeue → last ack)",
            f"  throughput       {self.images_per_s:.2f} images/s",
            f"  images           {self.images_ok} ok, {self.images_failed} failed",
            f"  batches          {self.batches_done} done, {self.batches_poisoned} poisoned"
            + (f", {len(self.missing_batches)} missing" if self.missing_batches else ""),
        ]
        if self.workers:
            lines.append("  per worker:")
            width = max(len(w) for w in self.workers)
            for worker in sorted(self.workers):
                images, batches = self.workers[worker], self.worker_batches.get(worker, 0)
                lines.append(f"    {worker:<{width}}  {images:>7} images  {batches:>5} batches")
        if self.failures:
            lines.append("  failures by reason (images):")
            for reason, count in sorted(self.failures.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"    {count:>7}  {reason}")
        if self.poisoned_batches:
            lines.append(f"  poisoned batches (fix the cause, then `producer requeue --run {self.run_id} --failed`):")
            for batch_id, reason in sorted(self.poisoned_batches.items())[:10]:
                lines.append(f"    {batch_id}  {reason}")
            if len(self.poisoned_batches) > 10:
                lines.append(f"    … and {len(self.poisoned_batches) - 10} more (--json lists them all)")
        if self.missing_batches:
            shown = ", ".join(self.missing_batches[:10]) + (" …" if len(self.missing_batches) > 10 else "")
            lines.append(f"  missing: {shown}; resend them with `producer requeue --run {self.run_id} --missing`")
        return "\n".join(lines)


def drain_report(tracker: RunTracker, missing: list[str] | None = None) -> DrainReport:
    """The report from what the tracker has read (refresh it first)."""
    progress = tracker.refresh()
    records = [r for b, r in tracker.records.items() if b in tracker.manifest.batches]
    first = min((r.dequeued_at for r in records), default=None)
    last = max((r.acked_at for r in records), default=None)
    wall_s = (last - first).total_seconds() if first and last else 0.0
    scored = sum(r.images for r in records)
    workers: Counter[str] = Counter()
    worker_batches: Counter[str] = Counter()
    for record in records:
        workers[record.worker] += record.images
        worker_batches[record.worker] += 1
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
        poisoned_batches={b: p.reason for b, p in tracker.poison.items() if b not in tracker.records},
    )


def failure_reasons(tracker: RunTracker) -> dict[str, int]:
    """Failed images by reason: error rows of scored batches, and every image of a poisoned one."""
    reasons: Counter[str] = Counter()
    for batch_id, record in tracker.records.items():
        if record.images_failed:
            try:
                rows = tracker.runs.read_results(tracker.run_id, batch_id)
            except NotFoundError:
                reasons["results missing for an acked batch"] += record.images_failed
                continue
            reasons.update(row.error or "unknown error" for row in rows if row.status == "error")
    for batch_id, report in tracker.poison.items():
        if batch_id not in tracker.records:
            reasons[f"poisoned: {report.reason}"] += len(tracker.manifest.batches.get(batch_id, []))
    return dict(reasons)


class WaitTimeout(WorkpoolError):
    """`wait --timeout-s` ran out before the run drained."""


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
    """Block until every batch of the run is acked or poisoned, then report.

    The queue may carry other runs, so completion is read from the run's own records. The
    queue's depth tells a different story: once it holds nothing at all (in-flight included)
    while batches are still unaccounted for, they cannot arrive any more. Batches with results
    but no timing record (a consumer died between its ack and the record) count as done then;
    the rest are reported missing, after `settle_s`, instead of waiting forever.
    """
    tracker = RunTracker(runs, run_id)
    started = time.monotonic()
    empty_since: float | None = None
    while True:
        progress = tracker.refresh()
        if on_progress is not None:
            on_progress(progress)
        if progress.complete:
            return drain_report(tracker)
        if queue.depth().messages == 0:
            empty_since = empty_since if empty_since is not None else time.monotonic()
            if time.monotonic() - empty_since >= settle_s:
                unfinished = tracker.unfinished()
                scored = runs.result_batch_ids(run_id)
                return drain_report(tracker, missing=[b for b in unfinished if b not in scored])
        else:
            empty_since = None
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise WaitTimeout(
                f"run {run_id} not drained after {timeout_s:.0f} s: "
                f"{progress.batches_finished}/{progress.batches} batches finished"
            )
        time.sleep(poll_s)
