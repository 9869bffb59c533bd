"""`orchestration status`: the queue, the nodes and the runs in one snapshot (or a live view)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from orchestration.autoscale.state import read_state as read_autoscaler_state
from orchestration.launcher import ClusterState, Launcher
from orchestration.reports.drain import LOOK_POLICY
from orchestration.reports.progress import RunProgress, RunTracker
from workpool.errors import NotFoundError, WorkpoolError
from workpool.queue import Depth, WorkQueue
from workpool.retry import retry_transient
from workpool.runs import RunStore


@dataclass
class Snapshot:
    queue: str
    depth: Depth
    cluster: ClusterState | None
    cluster_error: str | None = None
    runs: list[RunProgress] = field(default_factory=list)
    autoscaler: dict[str, Any] | None = None  # its last state (orchestration/autoscale/state.py)
    queue_exists: bool = True  # False until the first enqueue (or a consumer) creates it

    def to_json(self) -> dict[str, Any]:
        d = self.depth
        return {
            "queue": {
                "name": self.queue,
                "messages": d.messages,
                "poison": d.poison,
                "visible": d.visible,
                "in_flight": d.in_flight,
                "exists": self.queue_exists,
            },
            "cluster": None if self.cluster is None else cluster_json(self.cluster),
            "cluster_error": self.cluster_error,
            "autoscaler": self.autoscaler,
            "runs": [r.to_json() for r in self.runs],
        }


def cluster_json(cluster: ClusterState) -> dict[str, Any]:
    return {
        "backend": cluster.backend,
        "target_nodes": cluster.target_nodes,
        "nodes": [{"id": n.id, "state": n.state, "detail": n.detail} for n in cluster.nodes],
        "detail": cluster.detail,
    }


class StatusReader:
    """Builds snapshots; keeps run trackers (manifests read once) between refreshes, each refresh
    costing listings only (`RunStore.run_state`), so `--watch` stays cheap however long the run."""

    def __init__(self, runs: RunStore, queue: WorkQueue, launcher: Launcher | None, run_id: str | None) -> None:
        self.runs = runs
        self.queue = queue
        self.launcher = launcher
        self.run_id = run_id
        self.trackers: dict[str, RunTracker] = {}
        self.progress: dict[str, RunProgress] = {}
        self._elsewhere: set[str] = set()  # runs of other queues sharing the result store
        self.finished: set[str] = set()  # runs seen complete (without --run): not read again

    def _trackers(self) -> list[RunTracker]:
        if self.run_id is not None:
            if self.run_id not in self.trackers:
                self.trackers[self.run_id] = RunTracker(self.runs, self.run_id)
            return [self.trackers[self.run_id]]
        # Without --run: every run whose manifest names this queue (manifests are read once).
        try:
            run_ids = self.runs.list_runs()
        except NotFoundError:
            run_ids = []  # nothing enqueued yet: the result store does not exist
        for run_id in run_ids:
            if run_id in self.trackers or run_id in self._elsewhere:
                continue
            tracker = RunTracker(self.runs, run_id)
            if tracker.manifest.queue == self.queue.name:
                self.trackers[run_id] = tracker
            else:
                self._elsewhere.add(run_id)
        return list(self.trackers.values())

    def snapshot(self) -> Snapshot:
        cluster, cluster_error = None, None
        if self.launcher is not None:
            try:
                cluster = self.launcher.state()
            except WorkpoolError as exc:
                cluster_error = str(exc)
        trackers = self._trackers()
        latest = max(trackers, key=lambda t: t.manifest.created_at, default=None)
        for tracker in trackers:
            if tracker.run_id in self.finished:
                continue
            # Without --run, a finished run of the pool's history is only listed, never read,
            # unless it is the latest one (shown when nothing is going).
            if self.run_id is None and tracker is not latest and tracker.looks_complete():
                self.finished.add(tracker.run_id)
                self.progress.pop(tracker.run_id, None)
                continue
            self.progress[tracker.run_id] = tracker.refresh()
        shown = list(self.progress.values())
        if self.run_id is None:
            going = [p for p in shown if not p.complete]
            shown = going or [p for p in shown if latest is not None and p.run_id == latest.run_id]
        autoscaler = read_autoscaler_state(self.runs.store, self.queue.name)
        try:
            depth, exists = self.queue.depth(), True
        except NotFoundError:  # nothing enqueued and no consumer started yet: an empty queue to come
            depth, exists = Depth(messages=0, poison=0, visible=0, in_flight=0), False
        return Snapshot(self.queue.name, depth, cluster, cluster_error, shown, autoscaler, exists)


def format_eta(eta_s: float | None) -> str:
    if eta_s is None:
        return "—"
    minutes, seconds = divmod(round(eta_s), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def render(snapshot: Snapshot) -> Group:
    d = snapshot.depth
    split = "in flight included" if d.in_flight is None else f"{d.visible} visible, {d.in_flight} in flight"
    parts: list[Any] = [f"[bold]queue[/] {snapshot.queue}: {d.messages} message(s) ({split}), {d.poison} poisoned"]
    if not snapshot.queue_exists:
        parts[0] = f"[bold]queue[/] {snapshot.queue}: not created yet (`producer enqueue` creates it)"
    if snapshot.cluster_error:
        parts.append(f"[red]cluster: {snapshot.cluster_error}[/]")
    elif snapshot.cluster is not None:
        c = snapshot.cluster
        nodes = Table(title=f"{c.backend}: {len(c.nodes)} node(s), target {c.target_nodes}", title_justify="left")
        for column in ("node", "state", "detail"):
            nodes.add_column(column)
        for n in c.nodes:
            nodes.add_row(n.id, n.state, n.detail)
        parts.append(nodes)
        if c.detail:
            parts.append(f"[dim]{c.detail}[/]")
    if snapshot.autoscaler is not None:
        a = snapshot.autoscaler
        state = "running" if a["running"] else "stopped"
        parts.append(
            f"[bold]autoscaler[/] ({state}, {a['min']}:{a['max']}): target {a['target']} at {a['decided_at']}: "
            f"{a['reason']}"
        )
    runs = Table(title="runs", title_justify="left")
    for column in ("run", "batches done/total", "poisoned", "images ok", "failed", "images/s (1 min)", "ETA"):
        runs.add_column(column, justify="left" if column == "run" else "right")
    for r in snapshot.runs:
        runs.add_row(
            r.run_id,
            f"{r.batches_done}/{r.batches}",
            str(r.batches_poisoned),
            str(r.images_ok),
            str(r.images_failed),
            f"{r.images_per_s:.2f}",
            "done" if r.complete else format_eta(r.eta_s),
        )
    parts.append(runs if snapshot.runs else "no runs on this queue yet")
    for r in snapshot.runs:
        if r.gpu_busy_pct:  # workers without a GPU are absent, not 0 %
            busy = ", ".join(f"{worker} {pct:.0f}%" for worker, pct in r.gpu_busy_pct.items())
            parts.append(f"[bold]GPU busy[/] (last minute) {r.run_id}: {busy}")
    return Group(*parts)


def watch(reader: StatusReader, console: Console, interval_s: float = 1.0) -> None:
    """Live view until Ctrl-C, or until the run given with --run has finished."""
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("batches · ETA {task.fields[eta]}"),
    )
    tasks: dict[str, Any] = {}
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            # A storage blink costs the view a pause (jittered back-off), not the watch.
            snap = retry_transient(reader.snapshot, "reading the pool's status", LOOK_POLICY, log_level=logging.DEBUG)
            for r in snap.runs:
                if r.run_id not in tasks:
                    tasks[r.run_id] = bars.add_task(r.run_id, total=r.batches, eta="—")
                bars.update(
                    tasks[r.run_id], completed=r.batches_finished, eta="done" if r.complete else format_eta(r.eta_s)
                )
            live.update(Group(render(snap), bars))
            if reader.run_id is not None and snap.runs and snap.runs[0].complete:
                return
            time.sleep(interval_s)
