"""The autoscaler's control loop: observe the queue, the runs and the pool; decide; scale; record.

Every tick:

1. observe: the queue's visible messages and those in flight (`WorkQueue.depth`), the pool's
   target size and nodes (`Launcher.state`), and the per-node rate from the batch records of
   the queue's runs (only new records are read);
2. decide: `policy.decide`, a pure function;
3. act: `Launcher.scale` when the size changes, the only call into the backend, so the loop
   is the same for every backend;
4. record: one log line per decision with its inputs, the pool event log (`autoscale`
   events, which `orchestration report` draws), and the state `status` shows.

The clock is a parameter: tests drive ticks by hand.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestration.autoscale.policy import Decision, Limits, Observation, decide
from orchestration.autoscale.rate import RATE_WINDOW_S, Rate, measure_rate
from orchestration.autoscale.state import write_state
from orchestration.launcher import Launcher
from orchestration.reports.progress import RunTracker
from workpool.errors import NotFoundError, UsageError, WorkpoolError
from workpool.pool_events import record_size_change
from workpool.queue import WorkQueue
from workpool.retry import Backoff
from workpool.runs import BatchRecord, RunStore
from workpool.settings import Settings

log = logging.getLogger("orchestration.autoscale")

# Workers that acked a batch this recently count as running now (for workers per node).
ACTIVE_WORKER_S = 60.0
# The longest pause after failed ticks in a row (storage or the cluster API down).
FAILED_TICK_CAP_S = 60.0


class PoolGoneError(WorkpoolError):
    """The pool the autoscaler sizes was torn down (or never launched)."""


@dataclass
class Tick:
    """One tick's observation, decision and whether the size was changed."""

    observation: Observation
    decision: Decision
    changed: bool
    rate: Rate | None = None
    workers_per_node: float = 1.0
    inputs: dict[str, Any] = field(default_factory=dict)


class Autoscaler:
    def __init__(
        self,
        settings: Settings,
        launcher: Launcher,
        queue: WorkQueue,
        runs: RunStore,
        limits: Limits,
        *,
        deadline: datetime | None = None,
        interval_s: float = 5.0,
        rate_window_s: float = RATE_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.launcher = launcher
        self.queue = queue
        self.runs = runs
        self.limits = limits
        self.deadline = deadline
        self.interval_s = interval_s
        self.rate_window_s = rate_window_s
        self.clock = clock
        self.idle_since: float | None = None
        self.last_change_at: float | None = None
        self.last: Tick | None = None
        self.last_change: dict[str, Any] | None = None
        self.started_at = clock()
        self._trackers: dict[str, RunTracker] = {}
        self._ignored: set[str] = set()
        self._first_listing = True

    def prepare(self) -> None:
        """Like a consumer, make sure the queue exists: a queue nobody has sent to yet holds zero
        messages, it is not an error on every tick."""
        try:
            self.queue.create()
        except WorkpoolError as exc:
            log.warning("could not create queue %s (%s); assuming it exists", self.queue.name, exc)

    # --- observing ---------------------------------------------------------------------------
    def _records(self) -> list[BatchRecord]:
        """Batch records of this queue's runs (new ones read; finished old runs skipped at start)."""
        try:
            run_ids = self.runs.list_runs()
        except NotFoundError:
            run_ids = []
        for run_id in run_ids:
            if run_id in self._trackers or run_id in self._ignored:
                continue
            try:
                tracker = RunTracker(self.runs, run_id)
            except NotFoundError:
                continue  # listed before its manifest was readable: next tick
            if tracker.manifest.queue != self.queue.name or (self._first_listing and tracker.looks_complete()):
                # Runs finished before the autoscaler started are history: not read at all.
                self._ignored.add(run_id)
                continue
            self._trackers[run_id] = tracker
        self._first_listing = False
        now = datetime.fromtimestamp(self.clock(), UTC)
        horizon = now - timedelta(seconds=self.rate_window_s)
        records: list[BatchRecord] = []
        for run_id, tracker in list(self._trackers.items()):
            tracker.refresh(now)
            recent = [r for r in tracker.records.values() if r.acked_at >= horizon]
            if not recent and tracker.progress(now).complete:
                del self._trackers[run_id]  # finished and out of the window: never read again
                self._ignored.add(run_id)
            records.extend(recent)
        return records

    def observe(self) -> Tick:
        now = self.clock()
        depth = self.queue.depth()
        cluster = self.launcher.state()
        current = cluster.target_nodes
        backlog = depth.visible if depth.visible is not None else depth.messages
        in_flight = depth.in_flight
        work = backlog + (in_flight or 0)
        if work == 0:
            self.idle_since = now if self.idle_since is None else self.idle_since
        else:
            self.idle_since = None
        records = self._records()
        when = datetime.fromtimestamp(now, UTC)
        rate = measure_rate(records, when, self.rate_window_s)
        nodes_now = len(cluster.nodes) or current
        recent = when - timedelta(seconds=ACTIVE_WORKER_S)
        active_workers = len({r.worker for r in records if r.acked_at >= recent})
        workers_per_node = max(1.0, active_workers / nodes_now) if nodes_now else 1.0
        obs = Observation(
            now=now,
            current=current,
            backlog=backlog,
            in_flight=in_flight,
            idle_since=self.idle_since,
            last_change_at=self.last_change_at,
            rate_per_node=None if rate is None else rate.per_node(workers_per_node),
            deadline_at=None if self.deadline is None else self.deadline.timestamp(),
        )
        inputs: dict[str, Any] = {
            "backlog": backlog,
            "in_flight": in_flight,
            "messages": depth.messages,
            "current": current,
            "nodes_listed": len(cluster.nodes),
            "idle_for_s": None if self.idle_since is None else round(now - self.idle_since, 1),
            "rate_batches_per_node_s": None if obs.rate_per_node is None else round(obs.rate_per_node, 4),
            "rate_images_per_node_s": None if rate is None else round(rate.images_per_worker_s * workers_per_node, 3),
            "rate_from_batches": 0 if rate is None else rate.batches,
            "workers_per_node": round(workers_per_node, 2),
            "deadline": None if self.deadline is None else self.deadline.isoformat(),
            "deadline_in_s": None if self.deadline is None else round(self.deadline.timestamp() - now, 1),
        }
        decision = decide(obs, self.limits)
        return Tick(obs, decision, False, rate, workers_per_node, inputs)

    # --- acting --------------------------------------------------------------------------------
    def step(self) -> Tick:
        """One observe → decide → act → record cycle."""
        tick = self.observe()
        decision, obs = tick.decision, tick.observation
        if decision.target != obs.current:
            requested_at = datetime.fromtimestamp(self.clock(), UTC)
            try:
                self.launcher.scale(decision.target)
            except (UsageError, NotFoundError) as exc:
                raise PoolGoneError(f"cannot scale the {self.launcher.name} pool: {exc}") from exc
            tick.changed = True
            self.last_change_at = self.clock()
            self.last_change = {
                "at": _iso(self.last_change_at),
                "from": obs.current,
                "to": decision.target,
                "reason": decision.reason,
            }
            record_size_change(
                self.settings,
                "autoscale",
                self.launcher.name,
                decision.target,
                at=requested_at,
                reason=decision.reason,
                inputs=tick.inputs,
            )
        level = logging.INFO if tick.changed or self._differs(tick) else logging.DEBUG
        log.log(
            level,
            "%s %d → %d: %s | %s",
            "scaled" if tick.changed else "kept",
            obs.current,
            decision.target,
            decision.reason,
            " ".join(f"{k}={v}" for k, v in tick.inputs.items() if v is not None),
        )
        self.last = tick
        self._write_state(tick)
        return tick

    def _differs(self, tick: Tick) -> bool:
        """A decision worth a log line at INFO: the first, or one whose size, kind or counts changed
        (an unchanged decision on unchanged counts is logged at DEBUG)."""
        last = self.last
        if last is None:
            return True
        return _summary(last) != _summary(tick)

    def _write_state(self, tick: Tick, stopped: bool = False) -> None:
        lim = self.limits
        state = {
            "queue": self.queue.name,
            "backend": self.launcher.name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "min": lim.min_nodes,
            "max": lim.max_nodes,
            "batches_per_node": lim.batches_per_node,
            "idle_s": lim.idle_s,
            "cooldown_s": lim.cooldown_s,
            "interval_s": self.interval_s,
            "deadline": None if self.deadline is None else self.deadline.isoformat(),
            "target": tick.decision.target,
            "reason": tick.decision.reason,
            "decided_at": _iso(tick.observation.now),
            "last_change": self.last_change,
            "inputs": tick.inputs,
            "heartbeat_at": self.clock(),
            "stopped": stopped,
        }
        write_state(self.runs.store, self.queue.name, state)

    def run(self, stop: threading.Event) -> None:
        """Tick every `interval_s` until `stop` is set; a failing tick (storage, cluster API) is
        logged and retried after a jittered back-off (workpool/retry.py) whose ceiling starts at
        `interval_s` and doubles with each failure in a row, up to a minute; a pool that is gone
        ends the loop."""
        failures = Backoff(base_s=self.interval_s, cap_s=max(self.interval_s, FAILED_TICK_CAP_S))
        failed = 0
        try:
            self.prepare()
            while not stop.is_set():
                pause = self.interval_s
                try:
                    self.step()
                    failed = 0
                except PoolGoneError:
                    raise
                except WorkpoolError as exc:
                    pause = failures.delay_s(failed)
                    failed += 1
                    log.warning("autoscaler tick failed, retrying in %.1f s: %s", pause, exc)
                stop.wait(pause)
        finally:
            if self.last is not None:
                self._write_state(self.last, stopped=True)
            log.info("autoscaler for queue %s stopped", self.queue.name)


def _summary(tick: Tick) -> tuple[int, str, int, int | None]:
    d, o = tick.decision, tick.observation
    return d.target, _kind(d.reason), o.backlog, o.in_flight


def _kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
