"""Launch a pool, wait for runs to drain, tear it down: `launch --wait`, the benchmark, the demo."""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestration.launcher import Launcher
from orchestration.reports.drain import DrainReport, messages_on, wait_for_drain
from orchestration.reports.progress import RunTracker
from workpool.errors import NotFoundError, WorkpoolError
from workpool.pool_events import record_size_change, utcnow
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store


def pending_runs(settings: Settings, runs: RunStore) -> list[str]:
    """Runs of this queue with batches still pending: neither done (results written) nor poisoned,
    by the run layout's one rule (`RunStore.run_state`), read from listings."""
    try:
        run_ids = runs.list_runs()
    except NotFoundError:
        return []  # nothing was ever enqueued: the result store does not exist yet
    pending = []
    for run_id in run_ids:
        tracker = RunTracker(runs, run_id)
        if tracker.manifest.queue == settings.queue and not tracker.looks_complete():
            pending.append(run_id)
    return pending


def _failure_watch(launcher: Launcher, every_s: float) -> Callable[[object], None]:
    """A progress callback that asks the launcher, every `every_s` at most, whether its nodes failed."""
    last = [0.0]

    def watch(_progress: object) -> None:
        now = time.monotonic()
        if now - last[0] < max(every_s, 1.0):
            return
        last[0] = now
        reason = launcher.failure()
        if reason is not None:
            raise WorkpoolError(f"the {launcher.name} nodes cannot run consumers: {reason}")

    return watch


def launch_until_drained(
    settings: Settings,
    launcher: Launcher,
    nodes: int,
    run_ids: list[str] | None = None,
    *,
    timeout_s: float | None = None,
    force: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> list[DrainReport]:
    """Launch `nodes`, wait for `run_ids` (default: the queue's pending runs) to drain, tear down.

    The teardown happens whatever goes wrong (Ctrl-C included): a pool left running would
    keep a cluster's nodes billing.
    """
    runs = RunStore(open_result_store(settings))
    queue = open_queue(settings)
    waiting_for = pending_runs(settings, runs) if run_ids is None else run_ids
    reports = []
    watch = _failure_watch(launcher, settings.cluster_poll_interval_s)
    # A refused node count launches nothing, so there is nothing to tear down or record either.
    launcher.check_node_count(nodes, launching=True, force=force)
    try:
        requested_at = utcnow()
        launcher.launch(nodes, force=force)
        record_size_change(settings, "launch", launcher.name, nodes, at=requested_at, reason="launch --wait")
        say(f"launched {nodes} node(s) on {launcher.name} for queue {settings.queue}")
        if not waiting_for:
            say("no pending runs on this queue: waiting for the queue to empty")
            while messages_on(queue):
                watch(None)
                time.sleep(1.0)
        for run_id in waiting_for:
            say(f"waiting for run {run_id} to drain")
            reports.append(wait_for_drain(runs, queue, run_id, timeout_s=timeout_s, on_progress=watch))
    finally:
        launcher.teardown()
        record_size_change(settings, "teardown", launcher.name, 0, reason="drained (launch --wait)")
        say(f"tore down the {launcher.name} pool")
    return reports
