"""Tables the API returns: a run's results as Arrow, the benchmark's scale-tier table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestration.reports.export import arrow_table, export_rows
from orchestration.reports.html import table_html
from orchestration.tools.benchmark import BenchmarkResult, TierResult, model_label, render_table
from workpool.runs import RunStore

if TYPE_CHECKING:
    import pyarrow as pa
    from matplotlib.figure import Figure

BENCHMARK_COLUMNS = ["nodes", "wall_s", "images_per_s", "speedup", "efficiency", "launch_to_drained_s", "workers"]


def results_table(runs: RunStore, run_id: str) -> pa.Table:
    """One row per manifest image, in manifest order, with the columns of `orchestration results`
    (predictions as JSON text, as in its CSV and Parquet)."""
    return arrow_table(export_rows(runs, run_id, flat=True))


class BenchmarkTable:
    """The scale-tier table: a row per tier (nodes, wall_s, images_per_s, speedup, efficiency, ...)."""

    def __init__(self, result: BenchmarkResult) -> None:
        self.result = result

    @property
    def ok(self) -> bool:
        """Every tier drained completely, nothing poisoned."""
        return self.result.ok

    @property
    def tiers(self) -> list[TierResult]:
        return self.result.tiers

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "nodes": t.nodes,
                "wall_s": round(t.drain_wall_s, 3),
                "images_per_s": round(t.images_per_s, 3),
                "speedup": round(t.speedup, 3),
                "efficiency": round(t.efficiency, 3),
                "launch_to_drained_s": round(t.launch_to_drained_s, 3),
                "workers": len(t.workers),
            }
            for t in self.result.tiers
        ]

    def to_json(self) -> dict[str, Any]:
        return self.result.to_json()

    def to_arrow(self) -> pa.Table:
        import pyarrow as pa

        return pa.Table.from_pylist(self.rows) if self.rows else pa.table({c: [] for c in BENCHMARK_COLUMNS})

    def to_pandas(self) -> Any:
        """A pandas DataFrame (where pandas is installed)."""
        return self.to_arrow().to_pandas()

    def plot(self) -> Figure:
        """Wall time and speedup against nodes, each beside its ideal line."""
        from orchestration.reports.plot import benchmark_figure

        return benchmark_figure(self.result)

    def __str__(self) -> str:
        return render_table(self.result)

    def __repr__(self) -> str:
        return render_table(self.result)

    def _repr_html_(self) -> str:
        plan = self.result.plan
        title = f"Benchmark: {plan.images} images, {model_label(plan)}, backend {plan.backend}"
        return table_html(title, BENCHMARK_COLUMNS, [[row[c] for c in BENCHMARK_COLUMNS] for row in self.rows])
