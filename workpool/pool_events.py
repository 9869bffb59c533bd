"""The pool's event log: every change of a queue's pool size, and every preemption, in the result store.

```
pools/<queue>/events/<YYYYMMDDTHHMMSS.ffffffZ>-<random>.json    one small object per event
```

One object per event, never a shared file that is read, changed and written back: two shells
(a `scale` and the autoscaler, or a preempted node) may record at the same moment without
losing either event. The names start with the UTC time, so one listing returns them in order
and `since` filters on the names alone. The log lives beside the runs in the result store, so
`orchestration report` draws the pool size over time from any machine.

Recording is best effort: an event that cannot be written is logged and skipped, never the
reason a launch, scale or teardown fails (the pool matters more than its history).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workpool.errors import NotFoundError, StorageUnavailableError, WorkpoolError
from workpool.settings import Settings
from workpool.storage import ObjectStore, open_result_store

log = logging.getLogger(__name__)

POOLS = "pools"
RECORD_WAIT_S = 3.0  # the most a launch, scale or teardown waits for its event to be recorded
_STAMP = "%Y%m%dT%H%M%S.%fZ"

EventKind = Literal["launch", "scale", "autoscale", "teardown", "preempt"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class PoolEvent(BaseModel):
    """One thing that happened to a queue's pool.

    `nodes_before`/`nodes_after` are the pool's *target* size around the event (what was asked
    for, hence what a cluster bills from); None where the event does not change it (a
    preemption: the backend replaces a preempted spot node on its own). `node` names the node
    or worker an event is about (a preempted VM). `inputs` holds what a decision was based on
    (the autoscaler's backlog, in-flight batches, rate, deadline).
    """

    model_config = ConfigDict(extra="allow")

    kind: EventKind
    queue: str
    at: datetime = Field(default_factory=utcnow)
    backend: str = ""
    nodes_before: int | None = None
    nodes_after: int | None = None
    reason: str = ""
    node: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)

    @property
    def changes_size(self) -> bool:
        return self.nodes_after is not None


def events_prefix(queue: str) -> str:
    return f"{POOLS}/{queue}/events/"


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime(_STAMP)


def event_name(event: PoolEvent) -> str:
    """`pools/<queue>/events/<utc stamp>-<random>.json`: sorts by time, never collides."""
    return f"{events_prefix(event.queue)}{_stamp(event.at)}-{secrets.token_hex(4)}.json"


def _store(target: Settings | ObjectStore) -> ObjectStore:
    return open_result_store(target) if isinstance(target, Settings) else target


def record_pool_event(target: Settings | ObjectStore, event: PoolEvent) -> bool:
    """Append `event` to its queue's log; False (and a warning) when the store refused it."""
    problem = _write_event(_store(target), event)
    if problem is not None:
        log.warning("pool event %s of queue %s not recorded: %s", event.kind, event.queue, problem)
    return problem is None


def _write_event(store: ObjectStore, event: PoolEvent) -> str | None:
    """Write `event`; None when done, else why not (logged by the caller)."""
    name, data = event_name(event), event.model_dump_json().encode("utf-8")
    try:
        try:
            store.write(name, data)
        except NotFoundError:  # a pool launched before anything was enqueued: no container yet
            store.ensure()
            store.write(name, data)
    except (WorkpoolError, OSError) as exc:
        return str(exc)
    return None


def read_pool_events(target: Settings | ObjectStore, queue: str, since: datetime | None = None) -> list[PoolEvent]:
    """The queue's events in time order (from `since` on, when given); [] when there are none.

    An unreadable object (a damaged write, a newer schema that does not validate) is skipped
    with a warning: one bad event must not hide the rest of the pool's history.
    """
    store = _store(target)
    prefix = events_prefix(queue)
    try:
        names = list(store.list(prefix))
    except NotFoundError:
        return []  # no result store yet: nothing was ever recorded
    if since is not None:
        floor = prefix + _stamp(since)
        names = [n for n in names if n >= floor]
    events = []
    for name in names:
        try:
            events.append(PoolEvent.model_validate_json(store.read(name)))
        except NotFoundError:
            continue  # deleted between the listing and the read
        except (ValidationError, ValueError) as exc:
            log.warning("skipping unreadable pool event %s: %s", name, exc)
    events.sort(key=lambda e: e.at)
    return events


def current_size(events: Iterable[PoolEvent]) -> int:
    """The pool's target size after the last size-changing event (0 when none)."""
    size = 0
    for event in events:
        if event.nodes_after is not None:
            size = event.nodes_after
    return size


def last_recorded_size(target: Settings | ObjectStore, queue: str) -> int | None:
    """The pool's size as its log last recorded it (0 before any event; None if unreadable).

    Reads from the newest event backwards, so a long history costs one listing and a read or two.
    """
    try:
        return _last_size(_store(target), queue)
    except WorkpoolError as exc:
        log.warning("pool events of queue %s unreadable: %s", queue, exc)
        return None


def _last_size(store: ObjectStore, queue: str) -> int:
    try:
        names = list(store.list(events_prefix(queue)))
    except NotFoundError:
        return 0  # no result store yet
    for name in reversed(names):
        try:
            event = PoolEvent.model_validate_json(store.read(name))
        except (NotFoundError, ValidationError, ValueError):
            continue
        if event.nodes_after is not None:
            return event.nodes_after
    return 0


def record_size_change(
    settings: Settings,
    kind: EventKind,
    backend: str,
    nodes: int,
    *,
    at: datetime | None = None,
    reason: str = "",
    inputs: dict[str, Any] | None = None,
) -> bool:
    """Record a launch, scale, autoscale decision or teardown of `settings.queue`'s pool.

    `nodes_before` is read from the log itself; `at` defaults to now (give the time the
    request was made when recording after it succeeded: nodes bill from the request).

    Waits at most `RECORD_WAIT_S`: the pool's change is done, and a command must not hang on
    its bookkeeping while storage is slow or unreachable (the SDK's own retries would take
    many seconds). An unreachable store is not written to after the read already failed.
    """
    at = at or utcnow()

    def record() -> str | None:
        """None when recorded, else why not. Logs nothing: it may outlive the wait (and its logger's stream)."""
        store = open_result_store(settings)
        try:
            before: int | None = _last_size(store, settings.queue)
        except StorageUnavailableError as exc:
            return str(exc)
        except WorkpoolError:  # e.g. credentials that may write but not list: the size before is unknown
            before = None
        event = PoolEvent(
            kind=kind,
            queue=settings.queue,
            at=at,
            backend=backend,
            nodes_before=before,
            nodes_after=nodes,
            reason=reason,
            inputs=inputs or {},
        )
        return _write_event(store, event)

    outcome: list[str | None] = []

    def run() -> None:
        try:
            outcome.append(record())
        except Exception as exc:  # bookkeeping: reported below, never raised
            outcome.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, name="pool-event", daemon=True)
    thread.start()
    thread.join(RECORD_WAIT_S)
    problem = outcome[0] if outcome else f"no answer within {RECORD_WAIT_S:.0f} s (storage slow or unreachable)"
    if problem is not None:
        log.warning("pool event %s of queue %s not recorded: %s", kind, settings.queue, problem)
    return problem is None


def pool_size_steps(events: Iterable[PoolEvent]) -> list[tuple[datetime, int]]:
    """(time, size) at every size change, in order: a step function that starts at 0."""
    steps = []
    for event in events:
        if event.nodes_after is not None:
            steps.append((event.at, event.nodes_after))
    return steps


def node_seconds(events: Iterable[PoolEvent], start: datetime, end: datetime) -> float:
    """The pool's target size integrated over [start, end], in node-seconds.

    The size before the first event is 0 (no pool); the size holds between events.
    """
    if end <= start:
        return 0.0
    total = 0.0
    size = 0
    cursor = start
    for at, after in pool_size_steps(events):
        if at <= start:
            size = after
            continue
        if at >= end:
            break
        total += size * (at - cursor).total_seconds()
        cursor, size = at, after
    total += size * (end - cursor).total_seconds()
    return total
