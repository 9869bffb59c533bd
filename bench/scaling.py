"""Scaling efficiency: the same work on 1, 2, 4, 8, 16 local nodes; efficiency = T1 ÷ (N·TN).

The task is `SleepTask` (every image really fetched and decoded, then a fixed sleep per image in
place of the model): a fixed cost per image that uses no CPU, so 16 nodes on 2 cores measure the
pool (queue, leases, result writes, acks) and not a fight for cores. T is the drain wall time
(first dequeue → last ack, from the batch records), with every node already polling when the
run is enqueued. The work is a whole number of batches per node at the largest tier.

Embedded SQLite queue at N = 1, 2, 4, 8, 16; Azurite at N = 1, 2, 4, 8 with a shallow queue
(Azurite slows with depth, so only its efficiency is meaningful, never its absolute speed).

    python -m bench.scaling [--quick] [--no-azurite]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from bench.common import (
    SLEEP_ENV,
    PoolRun,
    bench_settings,
    efficiency,
    env,
    ratio_line,
    run_pool,
    samples,
    scratch_home,
)
from bench.projection import save_measured


@dataclass(frozen=True)
class ScalingPlan:
    tiers: tuple[int, ...]
    batch_size: int
    batches_per_node: int  # at the largest tier
    sleep_s: float  # per image

    @property
    def images(self) -> int:
        return max(self.tiers) * self.batches_per_node * self.batch_size

    def ideal_t1_s(self) -> float:
        return self.images * self.sleep_s


EMBEDDED = ScalingPlan(tiers=(1, 2, 4, 8, 16), batch_size=8, batches_per_node=40, sleep_s=0.03)
AZURITE = ScalingPlan(tiers=(1, 2, 4, 8), batch_size=8, batches_per_node=5, sleep_s=0.1)
QUICK = ScalingPlan(tiers=(1, 2, 4), batch_size=4, batches_per_node=4, sleep_s=0.02)


def measure(plan: ScalingPlan, backend: str, say: bool = True) -> list[PoolRun]:
    from tests.support.azurite import Azurite

    server = Azurite() if backend == "azurite" else None
    runs: list[PoolRun] = []
    try:
        changes: dict[str, object] = {"batch_size": plan.batch_size, "prefetch_batches": 1}
        if server is not None:
            server.start()
            changes["connection_string"] = server.connection_string
        source = samples(plan.images, (64, 48))
        with scratch_home("scaling") as home, env(**{SLEEP_ENV: str(plan.sleep_s)}):
            for nodes in plan.tiers:
                settings = bench_settings(home, f"scale-{backend}-n{nodes}", **changes)
                run = run_pool(settings, source, nodes, f"scale-{backend}-n{nodes}-{int(time.time())}")
                runs.append(run)
                if say:
                    print(
                        f"  {backend:8s} N={nodes:2d}: {run.report.images} images drained in {run.drain_wall_s:6.2f} s "
                        f"(nodes up and polling after {run.launch_s:.1f} s, not counted)",
                        flush=True,
                    )
    finally:
        if server is not None:
            server.stop()
    return runs


def fixed_loss_s(t1_s: float, nodes: int, tn_s: float) -> float:
    """What N nodes lose against a perfect 1/N split of the 1-node time: TN − T1/N (never negative)."""
    return max(tn_s - t1_s / nodes, 0.0)


def table(runs: list[PoolRun], plan: ScalingPlan, backend: str) -> list[str]:
    t1 = runs[0].drain_wall_s
    lines = [
        f"{backend}: {plan.images} images, batch {plan.batch_size}, sleep {plan.sleep_s * 1000:.0f} ms/image "
        f"(ideal T1 {plan.ideal_t1_s():.1f} s)",
        "  N   drain s   speedup   efficiency T1/(N·TN)",
    ]
    for run in runs:
        lines.append(
            f"  {run.nodes:<3d} {run.drain_wall_s:7.2f}   {t1 / run.drain_wall_s:6.2f}×   "
            f"{efficiency(t1, run.nodes, run.drain_wall_s):.3f}"
        )
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny plan (smoke run), N = 1, 2, 4")
    parser.add_argument("--no-azurite", action="store_true", help="embedded backend only")
    args = parser.parse_args(argv)
    embedded = QUICK if args.quick else EMBEDDED
    print("Scaling efficiency (SleepTask, local nodes, drain wall time first dequeue → last ack)", flush=True)
    ratios: list[str] = []
    runs = measure(embedded, "embedded")
    print("\n".join(table(runs, embedded, "embedded")))
    azurite_line = None
    if not args.no_azurite:
        azurite = QUICK if args.quick else AZURITE
        az_runs = measure(azurite, "azurite")
        print("\n".join(table(az_runs, azurite, "azurite (shallow queue)")))
        last = az_runs[-1]
        azurite_line = ratio_line(
            f"scaling efficiency azurite N={last.nodes}",
            efficiency(az_runs[0].drain_wall_s, last.nodes, last.drain_wall_s),
        )
        ratios.append(azurite_line)
        print(azurite_line)
    last = runs[-1]
    # The pool's fixed cost per run at the largest tier, for the projection.
    if not args.quick:
        save_measured({"fixed_loss_s": fixed_loss_s(runs[0].drain_wall_s, last.nodes, last.drain_wall_s)})
    goal = "≥ 0.95" if last.nodes == 16 else ""
    value = efficiency(runs[0].drain_wall_s, last.nodes, last.drain_wall_s)
    line = ratio_line(f"scaling efficiency embedded N={last.nodes}", value, goal)
    ratios.append(line)
    print(line, flush=True)
    return ratios


if __name__ == "__main__":
    main()
