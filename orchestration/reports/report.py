"""What a run cost, and the timeline behind it: `orchestration report`.

The run's drain report (orchestration/reports/drain.py) plus the pool's event log
(workpool/pool_events.py) give:

- **node-seconds**: the pool's size integrated from the run's enqueue (its manifest's
  `created_at`) to its last ack. Nodes idle before the enqueue, or kept after the last ack for
  the next run, are not this run's; the idle tail after the last ack until the pool was torn
  down or scaled to zero is shown apart (`tail_node_seconds`), to add when the pool served this
  run alone. The size is the *target* recorded by `launch`, `scale`, the autoscaler and
  `teardown`, from the moment each was requested (clusters bill from the request). Without any
  pool event (consumers started by hand), each worker's span from its first dequeue to its last
  ack stands in, a lower bound (`node_seconds_source: "worker spans"`).
- **cost** = node-seconds × price per node-hour ÷ 3600, and **cost per 1,000 images**;
- **images/s per node** = images scored ÷ node-seconds;
- **time to first result**: from the enqueue to the first ack.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestration.reports.drain import DrainReport, drain_report
from orchestration.reports.html import fields_html
from orchestration.reports.progress import RunTracker, gpu_busy_by_worker
from workpool.pool_events import PoolEvent, node_seconds, pool_size_steps, read_pool_events
from workpool.runs import BatchRecord, Manifest, PoisonReport, RunStore


@dataclass(frozen=True)
class BatchSpan:
    """One acked batch on the timeline: who held it, and when (UTC)."""

    batch_id: str
    worker: str
    images: int
    attempt: int
    dequeued_at: datetime
    acked_at: datetime
    started_at: datetime | None = None  # scoring began (after prefetch, decode and waiting for the worker)
    scored_at: datetime | None = None  # scoring ended; results were then written and the batch acked

    @classmethod
    def of(cls, record: BatchRecord) -> BatchSpan:
        extra = record.model_extra or {}
        return cls(
            batch_id=record.batch_id,
            worker=record.worker,
            images=record.images,
            attempt=record.attempt,
            dequeued_at=record.dequeued_at,
            acked_at=record.acked_at,
            started_at=_datetime(extra.get("started_at")),
            scored_at=record.scored_at,
        )


@dataclass(frozen=True)
class CostFigures:
    node_seconds: float
    node_seconds_source: str  # "pool events" | "worker spans" | "none"
    tail_node_seconds: float | None  # last ack → pool at zero; None while the pool is still up
    nodes_peak: int
    preemptions: int  # VMs preempted during the run (not their consumers)
    images_scored: int
    price_per_node_hour: float | None
    time_to_first_result_s: float | None
    time_to_first_dequeue_s: float | None

    @property
    def cost(self) -> float | None:
        if self.price_per_node_hour is None:
            return None
        return self.node_seconds * self.price_per_node_hour / 3600.0

    @property
    def cost_per_1000_images(self) -> float | None:
        cost = self.cost
        if cost is None or not self.images_scored:
            return None
        return cost * 1000.0 / self.images_scored

    @property
    def images_per_s_per_node(self) -> float | None:
        return self.images_scored / self.node_seconds if self.node_seconds > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "node_seconds": round(self.node_seconds, 3),
            "node_seconds_source": self.node_seconds_source,
            "tail_node_seconds": _round(self.tail_node_seconds, 3),
            "nodes_peak": self.nodes_peak,
            "preemptions": self.preemptions,
            "images_per_s_per_node": _round(self.images_per_s_per_node, 3),
            "time_to_first_result_s": _round(self.time_to_first_result_s, 3),
            "time_to_first_dequeue_s": _round(self.time_to_first_dequeue_s, 3),
            "price_per_node_hour": self.price_per_node_hour,
            "cost": _round(self.cost, 6),
            "cost_per_1000_images": _round(self.cost_per_1000_images, 6),
        }


@dataclass
class RunReport:
    """The drain report, the cost figures, and what the timeline picture is drawn from."""

    drain: DrainReport
    cost: CostFigures
    manifest: Manifest
    spans: list[BatchSpan] = field(default_factory=list)
    poisoned: list[PoisonReport] = field(default_factory=list)
    events: list[PoolEvent] = field(default_factory=list)
    window_end: datetime | None = None  # the last ack, or when this report was made
    gpu_busy_pct: dict[str, float] = field(default_factory=dict)  # per worker with a GPU, over the run

    @property
    def enqueued_at(self) -> datetime:
        return self.manifest.created_at

    def to_json(self) -> dict[str, Any]:
        return {
            **self.drain.to_json(),
            **self.cost.to_json(),
            "enqueued_at": self.enqueued_at.isoformat(),
            "gpu_busy_pct": self.gpu_busy_pct,
        }

    def _repr_html_(self) -> str:
        return fields_html(f"Run {self.drain.run_id}: report", self.to_json())

    def render(self) -> str:
        c = self.cost
        source = "" if c.node_seconds_source == "pool events" else f" (from {c.node_seconds_source})"
        lines = [
            self.drain.render(),
            f"  node-seconds     {c.node_seconds:.1f}{source}, peak {c.nodes_peak} node(s)"
            + (f", {c.preemptions} preemption(s)" if c.preemptions else ""),
        ]
        if c.tail_node_seconds:
            lines.append(f"  idle tail        {c.tail_node_seconds:.1f} node-seconds after the last ack (not counted)")
        if c.images_per_s_per_node is not None:
            lines.append(f"  per node         {c.images_per_s_per_node:.2f} images/s")
        if self.gpu_busy_pct:
            busy = ", ".join(f"{worker} {pct:.0f}%" for worker, pct in self.gpu_busy_pct.items())
            lines.append(f"  GPU busy         {busy}")
        if c.time_to_first_result_s is not None:
            lines.append(f"  first result     {c.time_to_first_result_s:.1f} s after the enqueue")
        if c.cost is not None:
            per_k = "n/a" if c.cost_per_1000_images is None else f"{c.cost_per_1000_images:.4f}"
            lines.append(
                f"  cost             {c.cost:.4f} at {c.price_per_node_hour:g} per node-hour; {per_k} per 1,000 images"
            )
        else:
            lines.append("  cost             no price (WORKPOOL_PRICE_PER_NODE_HOUR, or report --price-per-node-hour)")
        return "\n".join(lines)


def build_report(
    runs: RunStore,
    run_id: str,
    *,
    price_per_node_hour: float | None = None,
    now: datetime | None = None,
    drain: DrainReport | None = None,
) -> RunReport:
    """The report of `run_id` from its records and its queue's pool events (any machine, any time).

    `drain`: the drain report `wait` already made (it knows which batches went missing).
    """
    tracker = RunTracker(runs, run_id)
    if drain is None:
        drain = drain_report(tracker)
    else:
        tracker.refresh()
    manifest = tracker.manifest
    spans = sorted((BatchSpan.of(r) for r in tracker.records.values()), key=lambda s: s.dequeued_at)
    events = read_pool_events(runs.store, manifest.queue)
    end = drain.last_acked_at if tracker.state.complete and drain.last_acked_at else (now or datetime.now(UTC))
    cost = cost_figures(manifest, spans, events, end, price_per_node_hour)
    return RunReport(
        drain=drain,
        cost=cost,
        manifest=manifest,
        spans=spans,
        poisoned=list(tracker.poison.values()),
        events=events,
        window_end=end,
        gpu_busy_pct=gpu_busy_by_worker(tracker.records.values()),
    )


def cost_figures(
    manifest: Manifest,
    spans: list[BatchSpan],
    events: list[PoolEvent],
    end: datetime,
    price_per_node_hour: float | None,
) -> CostFigures:
    """Node-seconds and the rest over [enqueue, end] (see the module's docstring)."""
    start = manifest.created_at
    steps = pool_size_steps(events)
    used = node_seconds(events, start, end)
    covered = used > 0  # the pool's log knows of nodes during the run
    if covered:
        source = "pool events"
    elif spans:
        used, source = worker_span_seconds(spans), "worker spans"
    else:
        source = "none"
    first_dequeue = min((s.dequeued_at for s in spans), default=None)
    first_ack = min((s.acked_at for s in spans), default=None)
    return CostFigures(
        node_seconds=used,
        node_seconds_source=source,
        tail_node_seconds=idle_tail(events, end) if covered else None,
        nodes_peak=peak_size(steps, start, end) if covered else len({s.worker for s in spans}),
        preemptions=preempted_vms(events, start, end),
        images_scored=sum(s.images for s in spans),
        price_per_node_hour=price_per_node_hour,
        time_to_first_result_s=(first_ack - start).total_seconds() if first_ack else None,
        time_to_first_dequeue_s=(first_dequeue - start).total_seconds() if first_dequeue else None,
    )


def preempted_vms(events: Iterable[PoolEvent], start: datetime, end: datetime) -> int:
    """VMs preempted in [start, end]: every consumer of a VM records the notice, so count (notice, VM) pairs."""
    return len(
        {
            (e.inputs.get("event_id") or e.reason, e.inputs.get("vm") or e.node)
            for e in events
            if e.kind == "preempt" and start <= e.at <= end
        }
    )


def worker_span_seconds(spans: Iterable[BatchSpan]) -> float:
    """Each worker's first dequeue → last ack, summed: a lower bound on what its node was up."""
    bounds: dict[str, tuple[datetime, datetime]] = {}
    for s in spans:
        lo, hi = bounds.get(s.worker, (s.dequeued_at, s.acked_at))
        bounds[s.worker] = (min(lo, s.dequeued_at), max(hi, s.acked_at))
    return sum((hi - lo).total_seconds() for lo, hi in bounds.values())


def peak_size(steps: list[tuple[datetime, int]], start: datetime, end: datetime) -> int:
    """The largest pool size in force at any moment of [start, end]."""
    size, peak = 0, 0
    for at, after in steps:
        if at > end:
            break
        if at <= start:
            size = after
            continue
        peak = max(peak, size)
        size = after
    return max(peak, size)


def idle_tail(events: list[PoolEvent], end: datetime) -> float | None:
    """Node-seconds from `end` (the last ack) until the pool first reached zero; None if it has not."""
    for at, after in pool_size_steps(events):
        if at > end and after == 0:
            return node_seconds(events, end, at)
    return None


def _datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
