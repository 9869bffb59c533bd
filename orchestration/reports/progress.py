"""How far a run has got, from its state in the result store (`RunStore.run_state`).

A batch is *done* once its results are written, *poisoned* when it has a poison report instead,
else pending: one rule, owned by the run layout, that `status`, `wait`, `results`, `requeue
--missing` and the pending-runs check all share. The counts and timings come from the listings'
metadata, so a refresh costs a few listings (one request per 5,000 objects on Azure), never one
read per batch, and a `--watch` loop stays cheap however long the run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from workpool.runs import BatchRecord, Manifest, PoisonReport, RunState, RunStore

RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    images: int
    batches: int
    batches_done: int
    batches_poisoned: int
    images_ok: int
    images_failed: int
    images_per_s: float  # over the last minute (or since the first dequeue, if sooner)
    eta_s: float | None
    complete: bool
    # Per worker with a GPU: its GPUs' busy share (%) over the last minute; absent without a GPU.
    gpu_busy_pct: dict[str, float] = field(default_factory=dict)

    @property
    def batches_finished(self) -> int:
        return self.batches_done + self.batches_poisoned

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["images_per_s"] = round(self.images_per_s, 3)
        data["eta_s"] = None if self.eta_s is None else round(self.eta_s, 1)
        return data


class RunTracker:
    """Reads a run's manifest once, then its state on each refresh."""

    def __init__(self, runs: RunStore, run_id: str) -> None:
        self.runs = runs
        self.manifest: Manifest = runs.read_manifest(run_id)
        self.state = RunState.unknown(self.manifest)

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    @property
    def records(self) -> dict[str, BatchRecord]:
        """Timing records of the done batches that have one."""
        return self.state.records

    @property
    def poison(self) -> dict[str, PoisonReport]:
        """Poison reports of the poisoned batches."""
        return {b: s.poison for b, s in self.state.poisoned.items() if s.poison is not None}

    def refresh(self, now: datetime | None = None) -> RunProgress:
        self.state = self.runs.run_state(self.run_id, self.manifest, previous=self.state)
        return self.progress(now or datetime.now(UTC))

    def progress(self, now: datetime) -> RunProgress:
        done = self.state.done
        poisoned_images = sum(len(self.manifest.batches[b]) for b in self.state.poisoned)
        counts = [s.counts for s in done.values() if s.counts is not None]
        rate = rate_over_window(list(self.records.values()), now)
        finished_images = sum(c.images for c in counts) + poisoned_images
        remaining = max(self.manifest.images - finished_images, 0)
        complete = self.state.complete
        eta = 0.0 if complete else (remaining / rate if rate > 0 else None)
        return RunProgress(
            run_id=self.run_id,
            images=self.manifest.images,
            batches=len(self.manifest.batches),
            batches_done=len(done),
            batches_poisoned=len(self.state.poisoned),
            images_ok=sum(c.images_ok for c in counts),
            images_failed=sum(c.images_failed for c in counts) + poisoned_images,
            images_per_s=rate,
            eta_s=eta,
            complete=complete,
            gpu_busy_pct=gpu_busy_by_worker(self.records.values(), since=now - timedelta(seconds=RATE_WINDOW_S)),
        )

    def looks_complete(self) -> bool:
        """Whether every batch is done or poisoned, from the listings alone (no timing, no counts).

        Cheap enough to ask of every run in a store with a long history.
        """
        return self.runs.run_state(self.run_id, self.manifest, timing=False).complete

    def unfinished(self) -> list[str]:
        """Batches still pending at the last refresh."""
        return self.state.pending


def gpu_busy_by_worker(records: Iterable[BatchRecord], since: datetime | None = None) -> dict[str, float]:
    """Each worker's GPU busy share (%), weighted by the windows its records cover (acked after
    `since`, when given). Workers whose records carry no GPU figures are absent, never 0."""
    weighted: dict[str, tuple[float, float]] = {}
    for r in records:
        if r.gpu_busy_pct is None or (since is not None and r.acked_at < since):
            continue
        weight = r.gpu_window_s if r.gpu_window_s and r.gpu_window_s > 0 else 1e-3
        total, span = weighted.get(r.worker, (0.0, 0.0))
        weighted[r.worker] = (total + r.gpu_busy_pct * weight, span + weight)
    return {w: round(total / span, 1) for w, (total, span) in sorted(weighted.items())}


def rate_over_window(records: list[BatchRecord], now: datetime, window_s: float = RATE_WINDOW_S) -> float:
    """Images acked per second over the last `window_s` (shorter when the run began later)."""
    if not records:
        return 0.0
    start = max(now - timedelta(seconds=window_s), min(r.dequeued_at for r in records))
    span_s = (now - start).total_seconds()
    images = sum(r.images for r in records if r.acked_at >= start)
    return images / span_s if span_s > 0 else 0.0
