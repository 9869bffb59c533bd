"""`workpool.Run`: one run on the pool's queue: wait for it, read its results, requeue, report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from orchestration.api.display import Info, WaitProgress
from orchestration.api.tables import results_table
from orchestration.reports.drain import DrainReport, wait_for_drain
from orchestration.reports.export import ExportSummary, export_results
from orchestration.reports.progress import RunTracker
from orchestration.reports.report import RunReport, build_report
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.storage import open_result_store

if TYPE_CHECKING:
    import pyarrow as pa
    from matplotlib.figure import Figure

    from producer.enqueue import EnqueueSummary
    from producer.requeue import RequeueSummary
    from workpool.settings import Settings


class PoolView(Protocol):
    """What a run needs of its pool (`orchestration.api.pool.Pool` is one): its settings and queue.

    A protocol rather than the Pool class itself, so that this module and pool.py (which makes
    runs) do not import each other (tests/test_architecture.py: no import cycle, type-only ones
    included)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def queue(self) -> str: ...


class Run:
    """A run: the batches one enqueue sent, their results and their records.

    Get one from `Pool.enqueue` (then `.summary` says what was sent) or `Pool.run(run_id)`.
    """

    def __init__(self, pool: PoolView, run_id: str, summary: EnqueueSummary | None = None) -> None:
        self.pool = pool
        self.id = run_id
        self.summary = summary

    def __repr__(self) -> str:
        return f"Run({self.id!r}, queue={self.pool.queue!r})"

    def _repr_html_(self) -> str:
        return self.status()._repr_html_()

    def _runs(self) -> RunStore:
        return RunStore(open_result_store(self.pool.settings))

    def wait(self, timeout_s: float | None = None, *, poll_s: float = 1.0, progress: bool = True) -> DrainReport:
        """Block until every batch is done or poisoned; the drain report.

        Shows progress (in a notebook, and on a terminal's stderr). Raises `WaitTimeout` after
        `timeout_s`. Ctrl-C (KeyboardInterrupt) stops only the waiting: the run and the pool go on.
        A report with `.ok` False names poisoned or lost batches.
        """
        settings = self.pool.settings
        with WaitProgress(self.id, enabled=progress) as shown:
            return wait_for_drain(
                self._runs(),
                open_queue(settings),
                self.id,
                poll_s=poll_s,
                timeout_s=timeout_s,
                on_progress=shown.update,
            )

    def status(self) -> Info:
        """Batches done/total, poisoned, images ok/failed, images/s over the last minute, ETA."""
        return Info(f"Run {self.id}", RunTracker(self._runs(), self.id).refresh().to_json())

    def results(self) -> pa.Table:
        """One row per manifest image, in manifest order, with the columns of `orchestration results`:
        image, status, error, top_label, top_score, predictions (JSON text), batch_id, worker.
        Images not scored yet are error rows saying so. `.to_pandas()` where pandas is installed."""
        return results_table(self._runs(), self.id)

    def export(self, out: str | Path) -> ExportSummary:
        """Write the results to `out`: .csv, .jsonl or .parquet (by the suffix), atomically."""
        return export_results(self._runs(), self.id, Path(out))

    def requeue(self, *, failed: bool = False, missing: bool = False) -> RequeueSummary:
        """Send the run's poisoned batches back (`failed=True`), or every batch without a result (`missing=True`)."""
        from producer.requeue import requeue_failed, requeue_missing
        from workpool.errors import UsageError

        if failed == missing:
            raise UsageError("give exactly one of --failed or --missing")
        settings = self.pool.settings
        return requeue_failed(settings, self.id) if failed else requeue_missing(settings, self.id)

    def report(self, price_per_node_hour: float | None = None, *, drain: DrainReport | None = None) -> RunReport:
        """The drain report plus node-seconds and cost (price: the argument, else WORKPOOL_PRICE_PER_NODE_HOUR).

        `drain`: a report `wait` already made (it knows which batches went missing)."""
        price = self.pool.settings.price_per_node_hour if price_per_node_hour is None else price_per_node_hour
        return build_report(self._runs(), self.id, price_per_node_hour=price, drain=drain)

    def plot(self) -> Figure:
        """The run's timeline as a matplotlib Figure: a lane per worker, the backlog and the pool size."""
        from orchestration.reports.timeline_plot import timeline_figure

        return timeline_figure(self.report())
