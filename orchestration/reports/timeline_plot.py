"""The run's timeline as a PNG (`orchestration report --plot FILE.png`).

Top: one lane per worker, each acked batch a bar from its dequeue to its ack: the light part
is waiting (prefetched, decoding, waiting for the worker), the solid part scoring, the thin end
writing results and acking. Re-delivered batches (attempt > 1) are hatched, preemptions marked
with a red ✕ on the preempted worker's lane. Stragglers, idle gaps and cold starts show as long
bars, white space, and lanes that begin late. A worker with a GPU has its GPUs' busy share over
the run under its name (consumer/gpu_stats.py); one without has none.

Bottom: the batches not yet done (the queue's backlog and in-flight work, from the manifest's
time and the records), and the pool's size over time from its event log, with every launch,
scale, autoscale decision, teardown and preemption marked.

The x axis is seconds since the run was enqueued.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestration.reports.report import BatchSpan, RunReport
from workpool.pool_events import PoolEvent

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WAIT, SCORE, FINISH = "#b9d3ee", "#1f77b4", "#0b3d66"
POOL, BACKLOG, PREEMPT, COLD = "#2ca02c", "#ff7f0e", "#d62728", "#e6e6e6"
EVENT_COLOURS = {"launch": POOL, "scale": POOL, "autoscale": "#9467bd", "teardown": "#555555", "preempt": PREEMPT}
MAX_LANES_LABELLED = 40


def plot_timeline(report: RunReport, path: Path) -> Path:
    """Write the timeline figure as a PNG."""
    fig = timeline_figure(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def timeline_figure(report: RunReport) -> Figure:
    """The run's timeline: a lane per worker, the backlog and the pool size (a Figure outside
    pyplot: no backend is chosen, nothing global is kept, a notebook shows it)."""
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    t0 = report.enqueued_at
    end = _x(report.window_end or t0, t0)
    shown_events = _events_in_view(report.events, t0, end)
    right = max([end, *(_x(e.at, t0) for e in shown_events)], default=end)
    right = max(right * 1.06, 1.0)  # room for the last event's label

    workers = _lanes(report.spans, shown_events)
    lane_h = 0.32 if len(workers) <= MAX_LANES_LABELLED else max(8.0 / len(workers), 0.05)
    top_h = max(1.6, lane_h * len(workers) + 0.9)
    fig = Figure(figsize=(12, top_h + 2.6))
    lanes, pool = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [top_h, 2.4]})

    # --- one lane per worker -----------------------------------------------------------------
    index = {w: i for i, w in enumerate(workers)}
    for span in report.spans:
        _bar(lanes, span, index[span.worker], t0)
    for event in shown_events:
        if event.kind == "preempt":
            lane = index.get(event.node or "")
            if lane is not None:
                lanes.plot(_x(event.at, t0), lane, marker="X", color=PREEMPT, markersize=11, zorder=5)
            lanes.axvline(_x(event.at, t0), color=PREEMPT, linestyle=":", linewidth=1)
    cold = _cold_start(lanes, report, t0)
    lanes.set_yticks(range(len(workers)))
    if len(workers) <= MAX_LANES_LABELLED:
        lanes.set_yticklabels([_lane_label(w, workers, report.gpu_busy_pct) for w in workers], fontsize=8)
    else:
        lanes.set_yticklabels([])
        lanes.set_ylabel(f"{len(workers)} workers")
    lanes.set_ylim(len(workers) - 0.5, -0.5)
    lanes.grid(True, axis="x", alpha=0.3)
    lanes.set_title(_title(report), fontsize=10, loc="left")
    legend: list[Artist] = [
        Patch(color=WAIT, label="received, waiting (prefetch, decode)"),
        Patch(color=SCORE, label="scoring"),
        Patch(color=FINISH, label="writing results, ack"),
        Patch(facecolor="white", edgecolor=FINISH, hatch="///", label="re-delivered (attempt > 1)"),
    ]
    if cold is not None:
        legend.append(Patch(color=COLD, label=f"cold start (launch → first batch): {cold:.1f} s"))
    if any(e.kind == "preempt" for e in shown_events):
        legend.append(Line2D([], [], color=PREEMPT, marker="X", linestyle=":", markersize=9, label="preemption notice"))
    columns = 3 if len(legend) > 4 else len(legend)
    lanes.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.02 - 0.35 / top_h), ncol=columns,
                 fontsize=8, frameon=False)  # fmt: skip

    # --- backlog and pool size -----------------------------------------------------------------
    xs, ys = _backlog(report, t0)
    pool.fill_between(xs, ys, step="post", color=BACKLOG, alpha=0.25)
    pool.step(xs, ys, where="post", color=BACKLOG, label="batches not yet done")
    pool.set_ylabel("batches not yet done", color=BACKLOG)
    pool.set_ylim(0, max([*ys, 1]) * 1.15)
    pool.tick_params(axis="y", colors=BACKLOG)
    size = pool.twinx()
    px, py = _pool_steps(report.events, t0, right)
    if px:
        size.step(px, py, where="post", color=POOL, linewidth=2, label="pool size (nodes)")
    for event, label, rise in _labelled(shown_events, t0, right):
        x = _x(event.at, t0)
        colour = EVENT_COLOURS.get(event.kind, "black")
        level = event.nodes_after if event.nodes_after is not None else _size_at(report.events, event.at)
        size.plot(x, level, marker="X" if event.kind == "preempt" else "o", color=colour, markersize=7, zorder=5)
        if label:
            near_right = x > right * 0.85  # labels of the last events go to the left of their marker
            size.annotate(label, (x, level), textcoords="offset points", xytext=(-4 if near_right else 4, 6 + rise),
                          ha="right" if near_right else "left", fontsize=7, color=colour)  # fmt: skip
    size.set_ylabel("pool size (nodes)", color=POOL)
    size.tick_params(axis="y", colors=POOL)
    size.set_ylim(0, max([*py, 1]) * 1.35)
    size.yaxis.get_major_locator().set_params(integer=True)
    pool.set_xlabel(f"seconds since the run was enqueued ({t0:%Y-%m-%d %H:%M:%S} UTC)")
    pool.set_xlim(0, right)
    pool.grid(True, axis="x", alpha=0.3)
    handles = [h for ax in (pool, size) for h in ax.get_legend_handles_labels()[0]]
    pool.legend(handles=handles, loc="upper right", fontsize=8)

    fig.tight_layout()
    return fig


def _bar(ax: Any, span: BatchSpan, y: int, t0: datetime) -> None:
    """The batch's work as a bar (scoring, then writing and acking), its wait before as a thin one.

    A worker scores one batch at a time, so its bars never overlap; the waits of prefetched
    batches do overlap (they were received while the previous batch scored), hence thin, below.
    """
    hatch = "///" if span.attempt > 1 else None
    start, ack = _x(span.dequeued_at, t0), _x(span.acked_at, t0)
    if span.started_at is not None and span.scored_at is not None and span.dequeued_at <= span.started_at:
        scoring, scored = _x(span.started_at, t0), _x(span.scored_at, t0)
        if scoring > start:
            ax.broken_barh([(start, scoring - start)], (y + 0.22, 0.14), facecolors=WAIT, alpha=0.8, linewidth=0)
        parts = [(scoring, scored - scoring, SCORE), (scored, ack - scored, FINISH)]
    else:
        parts = [(start, ack - start, SCORE)]
    for left, width, colour in parts:
        if width > 0:
            ax.broken_barh([(left, width)], (y - 0.36, 0.56), facecolors=colour, edgecolor="white", linewidth=0.3,
                           hatch=hatch)  # fmt: skip


def _cold_start(ax: Any, report: RunReport, t0: datetime) -> float | None:
    """Shade the time from the run's pool launch (or the enqueue) to its first dequeue; its length."""
    if not report.spans:
        return None
    first = min(_x(s.dequeued_at, t0) for s in report.spans)
    launches = [
        _x(e.at, t0)
        for e in report.events
        if e.kind in ("launch", "scale", "autoscale") and e.at <= report.spans[0].dequeued_at
    ]
    begin = max([0.0, *[x for x in launches if x <= first]])
    if first - begin < 1.0:
        return None
    ax.axvspan(begin, first, color=COLD, linewidth=0)
    return first - begin


def _lanes(spans: list[BatchSpan], events: list[PoolEvent]) -> list[str]:
    """Workers in the order they first took a batch; preempted workers that acked nothing last."""
    seen: dict[str, None] = {}
    for span in sorted(spans, key=lambda s: s.dequeued_at):
        seen.setdefault(span.worker, None)
    for event in events:
        if event.kind == "preempt" and event.node:
            seen.setdefault(event.node, None)
    return list(seen)


def _lane_label(worker: str, workers: list[str], gpu_busy_pct: dict[str, float]) -> str:
    """The worker's short name, and its GPUs' busy share where it has a GPU (absent otherwise)."""
    busy = gpu_busy_pct.get(worker)
    return _short(worker, workers) + ("" if busy is None else f"\nGPU {busy:.0f}%")


def _short(worker: str, workers: list[str]) -> str:
    """Worker ids without the prefix they all share (a long host name), when that leaves a name."""
    prefix = os.path.commonprefix(workers) if len(workers) > 1 else ""  # noqa: RUF071 - names, not paths
    cut = prefix.rfind("-") + 1 if "-" in prefix else 0
    return worker[cut:] if 0 < cut < len(worker) and len(worker) > 18 else worker


def _backlog(report: RunReport, t0: datetime) -> tuple[list[float], list[int]]:
    """Batches not yet done over time: all of them at the enqueue, one less at each ack or poisoning."""
    total = len(report.manifest.batches)
    finished = sorted(
        [_x(s.acked_at, t0) for s in report.spans]
        + [_x(p.poisoned_at, t0) for p in report.poisoned if p.batch_id not in {s.batch_id for s in report.spans}]
    )
    xs, ys = [0.0], [total]
    for i, x in enumerate(finished, start=1):
        xs.append(x)
        ys.append(total - i)
    return xs, ys


def _pool_steps(events: list[PoolEvent], t0: datetime, right: float) -> tuple[list[float], list[int]]:
    xs: list[float] = []
    ys: list[int] = []
    size = 0
    for event in events:
        if event.nodes_after is None:
            continue
        x = max(_x(event.at, t0), 0.0)  # a pool launched before the enqueue starts the chart at its size
        if x > right:
            break
        if xs and xs[-1] == x:
            ys[-1] = event.nodes_after
        else:
            xs.append(x)
            ys.append(event.nodes_after)
        size = event.nodes_after
    if xs:
        if xs[0] > 0:
            xs.insert(0, 0.0)
            ys.insert(0, 0)
        xs.append(right)
        ys.append(size)
    return xs, ys


def _size_at(events: list[PoolEvent], at: datetime) -> int:
    size = 0
    for event in events:
        if event.at > at:
            break
        if event.nodes_after is not None:
            size = event.nodes_after
    return size


def _events_in_view(events: list[PoolEvent], t0: datetime, end: float) -> list[PoolEvent]:
    """Events from the enqueue to the end of the run, plus its idle tail (when the pool went to zero)."""
    last = t0 + timedelta(seconds=end)
    tail_limit = last + timedelta(seconds=max(end * 0.25, 30.0))
    shown = []
    for event in events:
        if event.at < t0:
            continue
        if event.at <= last or (event.at <= tail_limit and event.kind in ("teardown", "scale", "autoscale")):
            shown.append(event)
    return shown


def _labelled(events: list[PoolEvent], t0: datetime, right: float) -> list[tuple[PoolEvent, str, int]]:
    """Each event with its label and how far to raise it (points) so neighbours do not overlap.

    Preemptions close together (a pool of spot VMs evicted at once) share one label.
    """
    close = right * 0.04
    out: list[tuple[PoolEvent, str, int]] = []
    last_x, rise = float("-inf"), 0
    cluster: list[int] = []  # indexes in `out` of the current run of close preemptions
    for event in events:
        x = _x(event.at, t0)
        near = x - last_x < close
        if event.kind == "preempt" and near and cluster:
            cluster.append(len(out))
            first = out[cluster[0]]
            out[cluster[0]] = (first[0], f"preempted ({len(cluster)} workers)", first[2])
            out.append((event, "", 0))
            continue
        rise = (rise + 10) % 30 if near else 0
        cluster = [len(out)] if event.kind == "preempt" else []
        out.append((event, _event_label(event), rise))
        last_x = x
    return out


def _event_label(event: PoolEvent) -> str:
    if event.kind == "preempt":
        return f"preempted {event.node or ''}".strip()
    if event.nodes_before is not None and event.nodes_after is not None:
        return f"{event.kind} {event.nodes_before}→{event.nodes_after}"
    return event.kind


def _title(report: RunReport) -> str:
    d, c = report.drain, report.cost
    parts = [
        f"Run {d.run_id}: {d.images} images, {d.batches} batches, {len(d.workers)} worker(s)",
        f"drain {d.drain_wall_s:.1f} s, {d.images_per_s:.1f} images/s",
        f"{c.node_seconds:.0f} node-s, peak {c.nodes_peak} node(s)",
    ]
    if c.cost is not None:
        parts.append(f"cost {c.cost:.4f} ({c.cost_per_1000_images or 0:.4f} per 1,000 images)")
    return " · ".join(parts)


def _x(at: datetime, t0: datetime) -> float:
    return (at - t0).total_seconds()
