"""The measured per-node rate, from the batch records of the queue's runs.

A worker is *busy* while it holds at least one batch: the union of its records'
`[dequeued_at, acked_at]` intervals (prefetched batches overlap the one being scored, so the
union, not the sum). The rate is the batches acked in the window divided by the workers'
busy seconds in it: what one worker does while it has work, cold starts and idle gaps left
out, since a node that will be started for a deadline will have work. A node runs
`workers_per_node` workers (one per GPU), so the per-node rate is that multiple.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from workpool.runs import BatchRecord

RATE_WINDOW_S = 300.0


@dataclass(frozen=True)
class Rate:
    batches_per_worker_s: float
    images_per_worker_s: float
    batches: int  # acked in the window
    workers: int  # distinct workers that acked them

    def per_node(self, workers_per_node: float) -> float:
        """Batches per node-second."""
        return self.batches_per_worker_s * workers_per_node


def measure_rate(records: Iterable[BatchRecord], now: datetime, window_s: float = RATE_WINDOW_S) -> Rate | None:
    """The rate over the last `window_s`; None when no batch was acked in it."""
    start = now - timedelta(seconds=window_s)
    by_worker: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    batches = images = 0
    for record in records:
        if record.acked_at < start or record.acked_at > now:
            continue
        batches += 1
        images += record.images
        by_worker[record.worker].append((max(record.dequeued_at, start), record.acked_at))
    busy_s = sum(_union_s(spans) for spans in by_worker.values())
    if batches == 0 or busy_s <= 0:
        return None
    return Rate(batches / busy_s, images / busy_s, batches, len(by_worker))


def _union_s(spans: list[tuple[datetime, datetime]]) -> float:
    total = 0.0
    end: datetime | None = None
    for s, e in sorted(spans):
        if end is None or s > end:
            total += (e - s).total_seconds()
            end = e
        elif e > end:
            total += (e - end).total_seconds()
            end = e
    return total
