"""What the dashboard shows, refreshed on one background thread and served from memory.

One `StatusReader` (orchestration/reports/status.py, the owner of `status --json`) is asked for
a snapshot every `interval_s`; each page and API request is answered from the last one, so
ten open browsers cost the result store what one `status --watch` does. Beside the snapshot:

- **history**: the queue's depth and the pool's size at every refresh since the dashboard
  started (the backlog chart);
- **timeline** of each run shown: its batches per worker (dequeue, scoring start, scored,
  ack, attempt), poisoned batches with their reasons and the `producer requeue` command, the
  pool's events (launch, scale, every autoscaler decision with its reason, preemptions) and
  the cost so far (`cost_figures` of orchestration/reports/report.py, one owner).

Times in the timeline are seconds since the run's enqueue, in compact arrays: a run of 1,000
batches is ~60 KB of JSON before compression.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestration.reports.report import BatchSpan, cost_figures
from orchestration.reports.status import StatusReader
from workpool import logs
from workpool.errors import WorkpoolError
from workpool.pool_events import PoolEvent, pool_size_steps, read_pool_events

log = logging.getLogger(__name__)

HISTORY_POINTS = 3600  # an hour at one refresh a second
TIMELINE_RUNS = 3  # runs whose timeline is kept (those shown by status: going, else the latest)
EVENTS_SHOWN = 200  # pool events per run (the newest)


def _seconds(at: datetime | None, t0: datetime) -> float | None:
    return None if at is None else round((at - t0).total_seconds(), 3)


def requeue_command(run_id: str, config: Path | None) -> str:
    """The exact command that sends a run's poisoned batches back."""
    args = ["producer", "requeue", "--run", run_id, "--failed"]
    if config is not None:
        args[2:2] = ["--config", str(config)]
    return shlex.join(args)


class DashboardFeed:
    def __init__(
        self,
        reader: StatusReader,
        *,
        price_per_node_hour: float | None,
        config: Path | None,
        secrets: list[str],
        interval_s: float = 1.0,
    ) -> None:
        self.reader = reader
        self.price = price_per_node_hour
        self.config = config
        self.secrets = secrets
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {}
        self._timelines: list[dict[str, Any]] = []
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)
        self._error: str | None = None
        self._updated_at: float | None = None
        self._refresh_s: float | None = None
        self._events: list[PoolEvent] = []  # the queue's pool events, read incrementally

    # --- reading -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The content of `orchestration status --json` at the last refresh."""
        with self._lock:
            return self._status

    def timeline(self) -> dict[str, Any]:
        with self._lock:
            return {"runs": self._timelines, **self._meta()}

    def history(self, since: float | None = None) -> dict[str, Any]:
        """The points after `since` (epoch seconds), or all: a page asks for the new ones only."""
        with self._lock:
            points = [p for p in self._history if since is None or p["t"] > since]
            return {"points": points, **self._meta()}

    def _meta(self) -> dict[str, Any]:
        return {
            "updated_at": self._updated_at,
            "refresh_s": None if self._refresh_s is None else round(self._refresh_s, 3),
            "interval_s": self.interval_s,
            "error": self._error,
            "price_per_node_hour": self.price,
        }

    # --- refreshing --------------------------------------------------------------------------
    def refresh(self) -> None:
        started = time.monotonic()
        try:
            snap = self.reader.snapshot()
            status = snap.to_json()
            events = self._pool_events()
            timelines = [self._timeline(r.run_id, events) for r in snap.runs[:TIMELINE_RUNS]]
        except WorkpoolError as exc:  # storage unreachable: keep the last picture, say why
            with self._lock:
                self._error = logs.redact(str(exc), self.secrets)
            log.warning("dashboard refresh failed: %s", self._error)
            return
        point = {
            "t": round(time.time(), 3),
            "visible": snap.depth.visible,
            "in_flight": snap.depth.in_flight,
            "messages": snap.depth.messages,
            "poison": snap.depth.poison,
            "nodes": None if snap.cluster is None else len(snap.cluster.nodes),
            "target": None if snap.cluster is None else snap.cluster.target_nodes,
            "images_per_s": round(sum(r.images_per_s for r in snap.runs), 3),
        }
        with self._lock:
            self._status, self._timelines = status, timelines
            self._history.append(point)
            self._error = None
            self._updated_at = point["t"]
            self._refresh_s = time.monotonic() - started

    def _pool_events(self) -> list[PoolEvent]:
        """The pool's events: those newer than the last one known are read, the rest kept."""
        since = self._events[-1].at if self._events else None
        known = {e.model_dump_json() for e in self._events if since is not None and e.at >= since}
        fresh = read_pool_events(self.reader.runs.store, self.reader.queue.name, since=since)
        self._events.extend(e for e in fresh if e.model_dump_json() not in known)
        return self._events

    def _timeline(self, run_id: str, events: list[PoolEvent]) -> dict[str, Any]:
        tracker = self.reader.trackers[run_id]
        manifest = tracker.manifest
        t0 = manifest.created_at
        now = datetime.now(UTC)
        spans = sorted((BatchSpan.of(r) for r in tracker.records.values()), key=lambda s: s.dequeued_at)
        lanes: dict[str, list[list[Any]]] = {}
        for s in spans:
            lanes.setdefault(s.worker, []).append(
                [
                    _seconds(s.dequeued_at, t0),
                    _seconds(s.started_at, t0),
                    _seconds(s.scored_at, t0),
                    _seconds(s.acked_at, t0),
                    s.attempt,
                    s.images,
                ]
            )
        progress = self.reader.progress.get(run_id)
        end = now if progress is None or not progress.complete else max((s.acked_at for s in spans), default=now)
        cost = cost_figures(manifest, spans, events, end, self.price)
        gpu = progress.gpu_busy_pct if progress is not None else {}
        poisoned = sorted(tracker.poison.values(), key=lambda p: p.poisoned_at)
        return {
            "run_id": run_id,
            "enqueued_at": t0.isoformat(),
            "now_s": _seconds(now, t0),
            "batches": len(manifest.batches),
            "images": manifest.images,
            "lanes": [{"worker": w, "gpu_busy_pct": gpu.get(w), "batches": b} for w, b in sorted(lanes.items())],
            "pool_steps": [[_seconds(at, t0), size] for at, size in pool_size_steps(events)],
            "events": [_event(e, t0) for e in events[-EVENTS_SHOWN:]],
            "poisoned": [
                {
                    "batch_id": p.batch_id,
                    "reason": logs.redact(p.reason, self.secrets),
                    "attempts": p.attempts,
                    "worker": p.worker,
                    "at_s": _seconds(p.poisoned_at, t0),
                }
                for p in poisoned
            ],
            "requeue_command": requeue_command(run_id, self.config) if poisoned else None,
            "cost": cost.to_json(),
        }

    def run(self, stop: threading.Event) -> None:
        """Refresh every `interval_s` until `stop` is set."""
        while not stop.is_set():
            begun = time.monotonic()
            try:
                self.refresh()
            except Exception as exc:  # a bug must not freeze the page on an old picture silently
                log.exception("dashboard refresh failed")
                with self._lock:
                    self._error = logs.redact(f"{type(exc).__name__}: {exc}", self.secrets)
            stop.wait(max(self.interval_s - (time.monotonic() - begun), 0.05))


def _event(e: PoolEvent, t0: datetime) -> dict[str, Any]:
    return {
        "at_s": _seconds(e.at, t0),
        "kind": e.kind,
        "nodes_before": e.nodes_before,
        "nodes_after": e.nodes_after,
        "reason": e.reason,
        "node": e.node,
    }
