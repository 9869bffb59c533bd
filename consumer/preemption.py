"""Preemption notices: give every held batch back the moment Azure announces this VM's eviction.

Azure announces the eviction of a spot (low-priority) VM through Scheduled Events, an endpoint
of the instance metadata service (`WORKPOOL_SCHEDULED_EVENTS_URL`; on Azure
`http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01`, header
`Metadata: true`), about 30 s ahead:

    {"DocumentIncarnation": 3,
     "Events": [{"EventId": "…", "EventType": "Preempt", "ResourceType": "VirtualMachine",
                 "Resources": ["<vm name>"], "EventStatus": "Scheduled",
                 "NotBefore": "Mon, 30 Nov 2026 21:40:07 GMT", "Description": "…",
                 "EventSource": "Platform", "DurationInSeconds": -1}]}

A thread polls it every second. On a `Preempt` or `Terminate` event whose `Resources` name this
VM (its instance-metadata `compute/name`, or its host name), the consumer stops receiving and
releases every batch it holds at once, with `count_delivery=False`: the batches are visible to
the other consumers immediately instead of after their lease, and the delivery does not count
against `--max-attempts` (the VM's fate is no fault of the batch). Then it waits for the VM to
go (a signal, or the kill itself) rather than exiting: on Azure Batch a task that ended on its
own would not be requeued onto the replacement node. If the notice is withdrawn instead, it
exits 1 so that its task (or the local supervisor) starts a fresh consumer.

The watcher only reads: it never acknowledges an event (a `StartRequests` POST would hasten the
eviction), and an unreachable or garbled endpoint is logged now and then, never fatal.
Reboot, Redeploy and Freeze events leave the VM's disk and queue leases to their own course:
a lease outlives a freeze, and a reboot's batches come back when their lease runs out.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from workpool.errors import WorkpoolError
from workpool.pool_events import PoolEvent, record_pool_event
from workpool.storage import ObjectStore

log = logging.getLogger(__name__)

DEFAULT_URL = "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01"
TRIGGERS = frozenset({"Preempt", "Terminate"})
POLL_S = 1.0
REQUEST_TIMEOUT_S = 2.0
WARN_EVERY_S = 60.0  # an endpoint that stays down is mentioned once a minute, not every second

Fetch = Callable[[str], bytes]


@dataclass(frozen=True)
class ScheduledEvent:
    """One entry of a Scheduled Events document (the fields this module uses, plus the id)."""

    event_id: str
    event_type: str
    resources: tuple[str, ...]
    status: str = ""
    not_before: str = ""
    description: str = ""

    def concerns(self, names: Iterable[str]) -> bool:
        own = {n.lower() for n in names if n}
        return any(r.lower() in own for r in self.resources)


def parse_events(document: Any) -> list[ScheduledEvent]:
    """The events of a Scheduled Events document; malformed entries are skipped, not fatal."""
    if not isinstance(document, dict) or not isinstance(document.get("Events"), list):
        raise ValueError("not a Scheduled Events document (no Events list)")
    events = []
    for entry in document["Events"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("Resources", []), list):
            continue
        events.append(
            ScheduledEvent(
                event_id=str(entry.get("EventId", "")),
                event_type=str(entry.get("EventType", "")),
                resources=tuple(str(r) for r in entry.get("Resources", [])),
                status=str(entry.get("EventStatus", "")),
                not_before=str(entry.get("NotBefore", "")),
                description=str(entry.get("Description", "")),
            )
        )
    return events


def http_get(url: str) -> bytes:
    """GET with the `Metadata: true` header the instance metadata service requires."""
    # The URL is the validated http(s) setting (or derived from it): no file: or custom scheme.
    request = urllib.request.Request(url, headers={"Metadata": "true"})  # noqa: S310
    # The metadata service must be reached directly: a proxy from the environment would break it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=REQUEST_TIMEOUT_S) as response:
        data: bytes = response.read()
    return data


def instance_name_url(events_url: str) -> str:
    """The instance-metadata URL of this VM's name, on the same host as the events endpoint."""
    parts = urlsplit(events_url)
    query = "api-version=2021-02-01&format=text"
    return urlunsplit((parts.scheme, parts.netloc, "/metadata/instance/compute/name", query, ""))


@dataclass
class PreemptionWatcher:
    """Polls the Scheduled Events endpoint and calls `on_notice` once, for this VM's eviction."""

    url: str
    on_notice: Callable[[ScheduledEvent], None]
    poll_s: float = POLL_S
    fetch: Fetch = http_get
    names: set[str] = field(default_factory=set)
    notice: ScheduledEvent | None = None
    withdrawn: bool = False
    _name_known: bool = False
    _last_warning: float = float("-inf")

    def __post_init__(self) -> None:
        self.names.add(socket.gethostname())

    # --- one look -------------------------------------------------------------------------------
    def check(self) -> ScheduledEvent | None:
        """Read the document once; the first Preempt/Terminate event for this VM, or None.

        Raises OSError/ValueError when the endpoint is down or the document is unreadable.
        """
        self._learn_own_name()
        events = parse_events(json.loads(self.fetch(self.url)))
        return next((e for e in events if e.event_type in TRIGGERS and e.concerns(self.names)), None)

    def _learn_own_name(self) -> None:
        """The VM's name as Scheduled Events lists it (asked until the metadata service answers)."""
        if self._name_known:
            return
        try:
            name = self.fetch(instance_name_url(self.url)).decode("utf-8").strip()
        except (OSError, ValueError, UnicodeDecodeError):
            return  # the host name stands in meanwhile
        self._name_known = True
        if name:
            self.names.add(name)

    def own_name(self, event: ScheduledEvent) -> str:
        """The name under which `event` lists this VM."""
        own = {n.lower() for n in self.names}
        return next((r for r in event.resources if r.lower() in own), "")

    def tick(self) -> None:
        """One poll: fire on a new notice; note a notice that was withdrawn."""
        try:
            event = self.check()
        except (OSError, ValueError) as exc:
            now = time.monotonic()
            if now - self._last_warning >= WARN_EVERY_S:
                self._last_warning = now
                log.warning("scheduled events endpoint unreadable (%s); will keep trying", _short(exc))
            return
        if event is not None and self.notice is None:
            self.notice = event
            log.warning(
                "%s notice %s for VM %s (not before %s): releasing held batches",
                event.event_type,
                event.event_id,
                ", ".join(event.resources),
                event.not_before or "now",
            )
            self.on_notice(event)
        elif event is None and self.notice is not None and not self.withdrawn:
            self.withdrawn = True
            log.warning("the %s notice %s was withdrawn", self.notice.event_type, self.notice.event_id)

    # --- the thread -----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Thread body: poll until `stop` is set (the notice itself does not stop the polling)."""
        while True:
            self.tick()
            if stop.wait(self.poll_s):
                return

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="preemption", daemon=True)
        thread.start()
        return thread


def _short(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return f"{type(exc).__name__}: {exc}"


class PreemptionGuard:
    """The watcher's thread, the one call it makes, and the wait for the end.

    It knows nothing of the consumer: on a notice for this VM it calls `on_notice(event, vm)`
    once (from the watcher's thread), and the consumer gives every batch back there, uncounted
    (`Consumer.give_back(count_delivery=False)`). The consumer calls `start` once its threads
    run, and `hold` after shutting down.
    """

    def __init__(
        self,
        url: str,
        on_notice: Callable[[ScheduledEvent, str], None],
        *,
        poll_s: float = POLL_S,
        fetch: Fetch = http_get,
    ) -> None:
        self.on_notice = on_notice
        self.watcher = PreemptionWatcher(url, self._notice, poll_s=poll_s, fetch=fetch)
        self._stop = threading.Event()  # the watcher's own: it outlives the consumer's stop
        self._thread: threading.Thread | None = None

    @property
    def preempted(self) -> bool:
        return self.watcher.notice is not None

    def start(self) -> None:
        if self._thread is None:
            self._thread = self.watcher.start(self._stop)

    def _notice(self, event: ScheduledEvent) -> None:
        self.on_notice(event, self.watcher.own_name(event))

    def hold(self, stop_when: Callable[[], str | None], who: str, poll_s: float = 0.2) -> WorkpoolError | None:
        """After shutdown: wait for the VM to go (a signal, or the kill), or for the notice to be withdrawn.

        A withdrawn notice is returned as an error: the consumer ends with it (exit 1), so that
        its task (Azure Batch retries it) or the local supervisor starts a fresh consumer on the
        VM that stays.
        """
        try:
            if not self.preempted:
                return None
            log.info("worker %s: waiting for the VM to be evicted", who)
            while stop_when() is None:
                if self.watcher.withdrawn:
                    return WorkpoolError(
                        "the preemption notice was withdrawn; exiting so that a fresh consumer takes over"
                    )
                time.sleep(poll_s)
            return None
        finally:
            self._stop.set()


def record_preemption(
    store: ObjectStore, event: ScheduledEvent, released: int, *, queue: str, node: str, vm: str
) -> None:
    """A `preempt` event in the pool's log (best effort: the release matters, not its record).

    Every consumer of the VM records its own (its lane in the timeline gets the mark); `vm` and
    the event id let the report count VMs, not consumers.
    """
    record_pool_event(
        store,
        PoolEvent(
            kind="preempt",
            queue=queue,
            node=node,
            reason=f"{event.event_type} notice {event.event_id} (not before {event.not_before or 'now'})",
            inputs={"released_batches": released, "event_id": event.event_id, "vm": vm},
        ),
    )
