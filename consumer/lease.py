"""Keep the leases of held messages alive, always with the newest receipt.

Every message the consumer holds (being scored, or prefetched and waiting) is renewed in the
background well before its visibility timeout runs out, so a batch that scores for longer than
the timeout is never handed to a second consumer. Each renew returns a new receipt and voids
the old one; all later operations on the message (renew, ack, release, dead-letter) therefore go
through `finish`, which takes the message's own lock so that a renew and an ack can never race
with different receipts.

A renew that fails because storage is unreachable is retried on the next tick: the lease still
has most of its time left. A renew refused as stale means another consumer owns the message
now (our lease ran out during an outage); the lease is marked lost and dropped, and the worker
will not ack it (its results, written idempotently, are harmless).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from workpool.errors import LeaseLostError, StorageUnavailableError, WorkpoolError
from workpool.queue import Received, WorkQueue

log = logging.getLogger(__name__)


@dataclass
class _Lease:
    message: Received
    renewed_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)


class LeaseKeeper:
    def __init__(
        self, queue: WorkQueue, visibility_timeout_s: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.queue = queue
        self.visibility_timeout_s = visibility_timeout_s
        # Renew at a third of the timeout: two renews can fail before the lease runs out.
        self.interval_s = max(visibility_timeout_s / 3.0, 0.2)
        self._clock = clock
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self.lost: set[str] = set()

    def hold(self, message: Received) -> None:
        with self._lock:
            self._leases[message.id] = _Lease(message, self._clock())

    def held(self) -> list[str]:
        with self._lock:
            return list(self._leases)

    def current(self, message_id: str) -> Received | None:
        with self._lock:
            lease = self._leases.get(message_id)
        return lease.message if lease else None

    def finish(self, message_id: str, operation: Callable[[Received], None]) -> bool:
        """Run ack/release/dead-letter with the newest receipt and stop renewing the message.

        Returns False when the message is no longer ours (released at shutdown, or its lease
        was lost). A retryable error leaves it held and renewed, so the caller can try again.
        """
        with self._lock:
            lease = self._leases.get(message_id)
        if lease is None:
            return False
        with lease.lock:
            with self._lock:
                if self._leases.get(message_id) is not lease:
                    return False
            try:
                operation(lease.message)
            except LeaseLostError:
                self._drop(message_id, lost=True)
                return False
            self._drop(message_id)
            return True

    def release_all(self, delay_s: int = 0, *, count_delivery: bool = True) -> int:
        """Give every held message back (shutdown): visible again after `delay_s`.

        `count_delivery=False` (a preempted VM) forgives the deliveries: see `WorkQueue.release`.
        """
        released = 0
        for message_id in self.held():
            try:
                if self.finish(message_id, lambda m: self.queue.release(m, delay_s, count_delivery=count_delivery)):
                    released += 1
            except WorkpoolError as exc:
                # Storage down at shutdown: the lease simply runs out and the message returns.
                log.warning("could not release message %s (%s); it returns when its lease expires", message_id, exc)
                self._drop(message_id)
        return released

    def renew_due(self) -> None:
        """Renew every lease whose last renew is `interval_s` old. One tick of the thread."""
        now = self._clock()
        with self._lock:
            due = [(mid, lease) for mid, lease in self._leases.items() if now - lease.renewed_at >= self.interval_s]
        for message_id, lease in due:
            if not lease.lock.acquire(blocking=False):
                continue  # being acked or released right now
            try:
                with self._lock:
                    if self._leases.get(message_id) is not lease:
                        continue
                try:
                    lease.message = self.queue.renew(lease.message, self.visibility_timeout_s)
                    lease.renewed_at = self._clock()
                except LeaseLostError:
                    log.warning("lease on message %s was lost; another consumer owns it now", message_id)
                    self._drop(message_id, lost=True)
                except StorageUnavailableError as exc:
                    log.warning("could not renew message %s, will retry: %s", message_id, exc)
                except WorkpoolError as exc:
                    log.error("could not renew message %s: %s", message_id, exc)
            finally:
                lease.lock.release()

    def run(self, stop: threading.Event) -> None:
        """Thread body: renew until `stop` is set."""
        tick = min(self.interval_s / 4, 1.0)
        while not stop.wait(tick):
            self.renew_due()

    def _drop(self, message_id: str, *, lost: bool = False) -> None:
        with self._lock:
            self._leases.pop(message_id, None)
            if lost:
                self.lost.add(message_id)
