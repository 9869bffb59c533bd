"""`orchestration benchmark`: the old recipe's scale-tier table, on any backend.

For each tier (a node count) the same images run again as a fresh run: enqueue, launch that many
nodes, wait for the drain, tear down. The wall time of a tier is its drain wall time (first
dequeue → last ack, from the batch records), so node start-up before the first dequeue is left
out while a late-joining node's start-up still counts, as it would in production. Speedup is
against the smallest tier; scaling efficiency is speedup over the ideal (nodes / smallest tier).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestration.launcher import Launcher
from orchestration.pool import launch_until_drained
from workpool.errors import UsageError
from workpool.queue import open_queue
from workpool.settings import Settings


@dataclass
class TierResult:
    nodes: int
    run_id: str
    images: int
    images_ok: int
    batches: int
    batches_poisoned: int
    drain_wall_s: float
    images_per_s: float
    launch_to_drained_s: float  # node start-up included: what a user waits for
    workers: dict[str, int]
    complete: bool  # every batch acked or poisoned, none lost
    speedup: float = 0.0
    efficiency: float = 0.0


@dataclass
class BenchmarkPlan:
    tiers: list[int]
    images: int
    source: str
    task: str
    model: str | None
    labels: str | None = None
    backend: str = "local"
    batch_size: int | None = None
    timeout_s: float | None = None


@dataclass
class BenchmarkResult:
    plan: BenchmarkPlan
    started_at: str
    tiers: list[TierResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.tiers) and all(t.complete and t.batches_poisoned == 0 for t in self.tiers)

    def to_json(self) -> dict[str, Any]:
        return {"plan": asdict(self.plan), "started_at": self.started_at, "tiers": [asdict(t) for t in self.tiers]}


def parse_tiers(text: str) -> list[int]:
    try:
        tiers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--tiers {text!r}: expected node counts separated by commas, like 1,2,4") from None
    if not tiers or any(t < 1 for t in tiers) or len(set(tiers)) != len(tiers):
        raise UsageError(f"--tiers {text!r}: expected distinct node counts of 1 or more, like 1,2,4")
    return sorted(tiers)


def score_speedups(tiers: list[TierResult]) -> None:
    """Speedup against the smallest tier, and efficiency against the ideal (linear) speedup."""
    if not tiers:
        return
    base = tiers[0]
    for tier in tiers:
        tier.speedup = base.drain_wall_s / tier.drain_wall_s if tier.drain_wall_s > 0 else 0.0
        tier.efficiency = tier.speedup / (tier.nodes / base.nodes)


def run_benchmark(
    settings: Settings,
    plan: BenchmarkPlan,
    open_launcher: Callable[[str, Settings], Launcher],
    say: Callable[[str], None] = lambda _: None,
) -> BenchmarkResult:
    from producer.enqueue import EnqueueRequest, enqueue

    if plan.batch_size is not None:
        settings = replace_settings(settings, batch_size=plan.batch_size)
    queue = open_queue(settings)
    queue.create()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    result = BenchmarkResult(plan=plan, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    for nodes in plan.tiers:
        # Other work on the queue would be scored by the tier's nodes and spoil its timing.
        depth = queue.depth().messages
        if depth:
            raise UsageError(
                f"queue {settings.queue} holds {depth} message(s): benchmark on an idle queue "
                "(set WORKPOOL_QUEUE to a fresh name)"
            )
        run_id = f"bench-{stamp}-n{nodes}"
        enqueue(
            settings,
            EnqueueRequest(
                source=plan.source,
                run_id=run_id,
                task=plan.task,
                model=plan.model,
                labels=plan.labels,
                limit=plan.images,
            ),
        )
        launcher = open_launcher(plan.backend, settings)
        say(f"tier {nodes}: run {run_id}, launching {nodes} node(s) on {plan.backend}")
        started = time.monotonic()
        [report] = launch_until_drained(settings, launcher, nodes, [run_id], timeout_s=plan.timeout_s)
        drained_s = time.monotonic() - started
        tier = TierResult(
            nodes=nodes,
            run_id=run_id,
            images=report.images,
            images_ok=report.images_ok,
            batches=report.batches,
            batches_poisoned=report.batches_poisoned,
            drain_wall_s=report.drain_wall_s,
            images_per_s=report.images_per_s,
            launch_to_drained_s=drained_s,
            workers=report.workers,
            complete=report.ok,
        )
        result.tiers.append(tier)
        say(
            f"tier {nodes}: drained {report.images} images in {report.drain_wall_s:.1f} s ({report.images_per_s:.1f}/s)"
        )
        if not report.ok:
            say(f"tier {nodes}: {report.batches_poisoned} batch(es) poisoned, {len(report.missing_batches)} missing")
    score_speedups(result.tiers)
    return result


def model_label(plan: BenchmarkPlan) -> str:
    return plan.model.rstrip("/").rsplit("/", 1)[-1] if plan.model else plan.task


def replace_settings(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)


def render_table(result: BenchmarkResult) -> str:
    """A Markdown table, tiers as columns, like the old recipe's."""
    tiers = result.tiers
    header = ["", *[f"{t.nodes} node{'s' if t.nodes > 1 else ''}" for t in tiers]]
    rows = [
        ["Drain wall time (s)", *[f"{t.drain_wall_s:.1f}" for t in tiers]],
        ["Images/s", *[f"{t.images_per_s:.1f}" for t in tiers]],
        ["Speedup", *[f"{t.speedup:.2f}×" for t in tiers]],
        ["Scaling efficiency", *[f"{t.efficiency:.0%}" for t in tiers]],
        ["Launch → drained (s)", *[f"{t.launch_to_drained_s:.1f}" for t in tiers]],
        ["Workers that scored", *[str(len(t.workers)) for t in tiers]],
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    separator = "|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    plan = result.plan
    what = model_label(plan)
    title = f"{plan.images} images, {what}, batch size {plan.batch_size or 'default'}, backend {plan.backend}"
    return "\n".join([title, "", line(header), separator, *[line(r) for r in rows]])
