"""The work-queue interface: the one seam between the roles and the message transport.

Both backends (Azure Storage Queue, embedded SQLite) behave the same; the contract suite in
`tests/test_queue_contract.py` proves it. Delivery is at least once: a received message is
invisible for its visibility timeout, then comes back with `dequeue_count` one higher unless
it was acked. Every operation on a received message needs its newest receipt.

`dequeue_count` counts the deliveries that count against `--max-attempts`: a message released
with `count_delivery=False` (its consumer's VM is being preempted, no fault of the message's)
comes back with the same `dequeue_count`, and `forgiven` one higher.
"""

from __future__ import annotations

import base64
import json
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from workpool.messages import MAX_MESSAGE_BYTES, encoded_size

MAX_RECEIVE = 32  # Azure's ceiling for one receive call; the embedded backend keeps it too.


@dataclass(frozen=True)
class Received:
    """A message held under a lease. `receipt` changes on every renew.

    `dequeue_count` excludes the `forgiven` deliveries (released with `count_delivery=False`).
    """

    id: str
    receipt: str
    body: str
    dequeue_count: int
    inserted_at: datetime
    forgiven: int = 0

    def with_receipt(self, receipt: str) -> Received:
        return replace(self, receipt=receipt)


@dataclass(frozen=True)
class Depth:
    """Messages in the work queue (in-flight ones included) and in its poison queue.

    `visible` (a receive could take them now) and `in_flight` (leased by a consumer, or
    released with a delay) split `messages` where the backend can tell; None where it cannot
    (Azure, when 32 or more messages are visible: a peek shows at most 32).
    """

    messages: int
    poison: int
    visible: int | None = None
    in_flight: int | None = None


@dataclass(frozen=True)
class PoisonRecord:
    """What `dead_letter` puts on `<queue>-poison`: the original body and why it failed."""

    body: str
    reason: str
    attempts: int
    dead_lettered_at: str

    def encode(self) -> str:
        """JSON text that fits in one queue message, whatever the body.

        A body near the 64 KiB limit grows when escaped into the record (every quote doubles), and
        the poison queue refuses what does not fit: then the body travels zlib-compressed and
        base64-encoded as `body_zlib` (and the reason is cut short), so the batch can still be
        dead-lettered and `requeue --failed` restores it byte for byte.
        """
        text = json.dumps(self.__dict__, ensure_ascii=False, separators=(",", ":"))
        if encoded_size(text) <= MAX_MESSAGE_BYTES:
            return text
        packed = base64.b64encode(zlib.compress(self.body.encode("utf-8"), 9)).decode("ascii")
        data = {**self.__dict__, "body": "", "body_zlib": packed, "reason": self.reason[:1000]}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> PoisonRecord:
        data: dict[str, Any] = json.loads(text)
        if data.get("body_zlib"):
            try:
                data["body"] = zlib.decompress(base64.b64decode(data["body_zlib"])).decode("utf-8")
            except zlib.error as exc:
                raise ValueError(f"poison record's compressed body is damaged: {exc}") from None
        return cls(
            body=str(data["body"]),
            reason=str(data["reason"]),
            attempts=int(data["attempts"]),
            dead_lettered_at=str(data["dead_lettered_at"]),
        )


@dataclass(frozen=True)
class Removal:
    """What `remove_where` did: `removed` visible messages deleted; `in_flight` matching messages
    it left alone because they were leased (or released with a delay), or None where the backend
    cannot see them (Azure: an invisible message cannot be read until it is visible again)."""

    removed: int
    in_flight: int | None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class WorkQueue(ABC):
    """A named queue with its poison queue `<name>-poison`."""

    name: str

    @property
    def poison_name(self) -> str:
        return f"{self.name}-poison"

    @abstractmethod
    def create(self) -> None:
        """Create the queue and its poison queue if missing (idempotent)."""

    @abstractmethod
    def send(self, bodies: Sequence[str], *, ttl_s: int = -1, delay_s: int = 0) -> None:
        """Put messages on the queue; ttl_s=-1 means they never expire."""

    @abstractmethod
    def receive(self, max_messages: int = 1, *, visibility_timeout_s: int = 30) -> list[Received]:
        """Lease up to `max_messages` (at most 32) visible messages; [] when none are visible."""

    @abstractmethod
    def renew(self, message: Received, visibility_timeout_s: int) -> Received:
        """Extend the lease from now; returns the message with its new receipt.

        Raises `LeaseLostError` when the receipt is stale (lease expired and re-delivered).
        """

    @abstractmethod
    def ack(self, message: Received) -> None:
        """Delete a processed message. Raises `LeaseLostError` on a stale receipt."""

    @abstractmethod
    def release(self, message: Received, delay_s: int = 0, *, count_delivery: bool = True) -> None:
        """Give the message back: visible again after `delay_s` (0 = at once).

        With `count_delivery=False` this delivery is forgiven: the message comes back with the
        same `dequeue_count` (for a consumer that gives work back through no fault of the
        message, such as a preempted VM). Raises `LeaseLostError` on a stale receipt.
        """

    @abstractmethod
    def dead_letter(self, message: Received, reason: str) -> None:
        """Move the message to the poison queue with its reason, then delete it here.

        A crash between the two leaves a duplicate in the poison queue, never a loss.
        """

    @abstractmethod
    def depth(self) -> Depth:
        """Messages in the queue (in-flight ones included) and in the poison queue."""

    @abstractmethod
    def remove_where(self, match: Callable[[str], bool], *, hold_s: int = 300) -> Removal:
        """Delete every visible message whose body `match`es (a cancelled run's batches).

        Messages in flight are left alone: their consumer finishes or releases them, never half
        way. Messages that do not match stay as they were, `dequeue_count` included; a backend
        that must receive a message to read it (Azure) holds them for up to `hold_s` during the
        walk and then makes them visible again at once, their delivery forgiven.
        """

    @abstractmethod
    def purge(self) -> None:
        """Delete every message in the queue (the poison queue is left alone)."""

    @abstractmethod
    def poison(self) -> WorkQueue:
        """The poison queue as a queue of its own (its bodies are `PoisonRecord` JSON)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to close
        """Release connections. Safe to call twice."""

    def __enter__(self) -> WorkQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
