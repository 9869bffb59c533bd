"""How far a run has got, read from its records in the result store.

A batch is *done* when its timing record exists (the consumer writes it after the ack, so the
message is gone from the queue) and *poisoned* when a poison report exists. Records never
change once written (a retry overwrites with an equivalent one), so a tracker reads each only
once and a `--watch` loop costs one listing per refresh, not one read per batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from workpool.runs import BatchRecord, Manifest, PoisonReport, RunStore

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

    @property
    def batches_finished(self) -> int:
        return self.batches_done + self.batches_poisoned

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["images_per_s"] = round(self.images_per_s, 3)
        data["eta_s"] = None if self.eta_s is None else round(self.eta_s, 1)
        return data


class RunTracker:
    """Reads a run's manifest once, then its new batch records and poison reports on each refresh."""

    def __init__(self, runs: RunStore, run_id: str) -> None:
        self.runs = runs
        self.manifest: Manifest = runs.read_manifest(run_id)
        self.records: dict[str, BatchRecord] = {}
        self.poison: dict[str, PoisonReport] = {}

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    def refresh(self, now: datetime | None = None) -> RunProgress:
        wanted = set(self.manifest.batches)
        for batch_id in sorted((self.runs.record_batch_ids(self.run_id) & wanted) - set(self.records)):
            record = self.runs.read_batch_record(self.run_id, batch_id)
            if record is not None:
                self.records[batch_id] = record
        # A requeued poisoned batch loses its report (producer requeue --failed): re-read them all.
        self.poison = {p.batch_id: p for p in self.runs.read_poison(self.run_id) if p.batch_id in wanted}
        return self.progress(now or datetime.now(UTC))

    def progress(self, now: datetime) -> RunProgress:
        done = self.records
        poisoned = {b: p for b, p in self.poison.items() if b not in done}
        images_ok = sum(r.images_ok for r in done.values())
        images_failed = sum(r.images_failed for r in done.values())
        images_failed += sum(len(self.manifest.batches[b]) for b in poisoned)
        rate = rate_over_window(list(done.values()), now)
        finished_images = sum(r.images for r in done.values()) + sum(len(self.manifest.batches[b]) for b in poisoned)
        remaining = max(self.manifest.images - finished_images, 0)
        complete = len(done) + len(poisoned) >= len(self.manifest.batches)
        eta = 0.0 if complete else (remaining / rate if rate > 0 else None)
        return RunProgress(
            run_id=self.run_id,
            images=self.manifest.images,
            batches=len(self.manifest.batches),
            batches_done=len(done),
            batches_poisoned=len(poisoned),
            images_ok=images_ok,
            images_failed=images_failed,
            images_per_s=rate,
            eta_s=eta,
            complete=complete,
        )

    def looks_complete(self) -> bool:
        """Whether every batch is acked or poisoned, from listings alone (no record is read).

        Cheap enough to ask of every run in a store with a long history.
        """
        finished = self.runs.record_batch_ids(self.run_id) | {p.batch_id for p in self.runs.read_poison(self.run_id)}
        return set(self.manifest.batches) <= finished

    def unfinished(self) -> list[str]:
        return [b for b in self.manifest.batches if b not in self.records and b not in self.poison]


def rate_over_window(records: list[BatchRecord], now: datetime, window_s: float = RATE_WINDOW_S) -> float:
    """Images acked per second over the last `window_s` (shorter when the run began later)."""
    if not records:
        return 0.0
    start = max(now - timedelta(seconds=window_s), min(r.dequeued_at for r in records))
    span_s = (now - start).total_seconds()
    images = sum(r.images for r in records if r.acked_at >= start)
    return images / span_s if span_s > 0 else 0.0
