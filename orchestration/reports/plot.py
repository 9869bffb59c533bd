"""The benchmark's PNG: wall time and speedup against nodes, each beside its ideal line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from orchestration.tools.benchmark import BenchmarkResult, model_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_benchmark(result: BenchmarkResult, path: Path) -> Path:
    """Write the benchmark figure as a PNG."""
    fig = benchmark_figure(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def benchmark_figure(result: BenchmarkResult) -> Figure:
    """Wall time and speedup against nodes (a Figure outside pyplot: no backend chosen, nothing kept)."""
    from matplotlib.figure import Figure

    tiers = result.tiers
    nodes = [t.nodes for t in tiers]
    base = tiers[0]
    fig = Figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)

    walls = [t.drain_wall_s for t in tiers]
    left.plot(nodes, walls, "o-", color="tab:blue", label="measured")
    left.plot(nodes, [base.drain_wall_s * base.nodes / n for n in nodes], "--", color="gray", label="ideal (linear)")
    for n, w in zip(nodes, walls, strict=True):
        left.annotate(f"{w:.1f} s", (n, w), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    left.set(title="Drain wall time", xlabel="nodes", ylabel="seconds (first dequeue → last ack)")
    left.set_ylim(0, max(walls) * 1.15)  # headroom for the labels above the points

    speedups = [t.speedup for t in tiers]
    right.plot(nodes, speedups, "o-", color="tab:green", label="measured")
    right.plot(nodes, [n / base.nodes for n in nodes], "--", color="gray", label="ideal (linear)")
    for t in tiers:
        right.annotate(
            f"{t.speedup:.2f}× ({t.efficiency:.0%})", (t.nodes, t.speedup), textcoords="offset points",
            xytext=(0, 7), ha="center", fontsize=8,
        )  # fmt: skip
    right.set(title="Speedup (scaling efficiency)", xlabel="nodes", ylabel=f"× vs {base.nodes} node(s)")
    right.set_ylim(0, max(*speedups, nodes[-1] / base.nodes) * 1.15)

    for ax in (left, right):
        ax.set_xticks(nodes)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    plan = result.plan
    fig.suptitle(f"{plan.images} images · {model_label(plan)} · {plan.backend} backend", fontsize=10)
    fig.tight_layout()
    return fig
