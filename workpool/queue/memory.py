"""In-memory work queue: the queue contract in one process's memory, for fast in-process tests.

Like dramatiq's StubBroker: nothing leaves the process, so it serves consumers, producers and
reports that run in the test's own process, never a child process or a cluster node. It keeps
the contract the other backends keep (`tests/test_queue_contract.py` runs on it): leases with
fresh receipts, `dequeue_count` and `forgiven`, time to live, delayed release, the 64 KiB limit
and at most 32 messages a receive. One lock serialises every operation, so any number of
threads can compete for messages. `clock` (seconds, like `time.time`) lets a test drive time.

A `MemoryQueues` holds a set of named queues (what a storage account's queue service holds);
`workpool.memory` mounts one on a home folder, so `open_queue` serves it there.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from workpool.errors import LeaseLostError
from workpool.messages import check_size
from workpool.queue.base import MAX_RECEIVE, Depth, PoisonRecord, Received, WorkQueue, now_iso


@dataclass
class _Message:
    body: str
    inserted_at: float
    visible_at: float
    expires_at: float | None
    dequeue_count: int = 0
    forgiven: int = 0
    receipt: str | None = None


class MemoryQueues:
    """Named queues in memory, shared by every `MemoryQueue` opened on them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.queues: dict[str, dict[int, _Message]] = {}
        self._next_id = 0

    def queue(self, name: str) -> MemoryQueue:
        return MemoryQueue(name, self)

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id


class MemoryQueue(WorkQueue):
    def __init__(self, name: str, queues: MemoryQueues | None = None) -> None:
        self.name = name
        self._queues = queues or MemoryQueues()

    def _messages(self, name: str | None = None) -> dict[int, _Message]:
        """The queue's messages by id (in sending order), expired ones dropped. Call under the lock."""
        messages = self._queues.queues.setdefault(name or self.name, {})
        now = self._queues.clock()
        for expired in [i for i, m in messages.items() if m.expires_at is not None and m.expires_at <= now]:
            del messages[expired]
        return messages

    def _leased(self, message: Received) -> _Message:
        """The stored message `message` holds the newest lease on. Call under the lock."""
        stored = self._messages().get(int(message.id)) if message.id.isdigit() else None
        if stored is None or stored.receipt != message.receipt:
            raise LeaseLostError(f"message {message.id} on {self.name}: receipt is stale or message is gone")
        return stored

    def create(self) -> None:
        with self._queues.lock:
            self._messages()
            self._messages(self.poison_name)

    def send(self, bodies: Sequence[str], *, ttl_s: int = -1, delay_s: int = 0) -> None:
        for body in bodies:
            check_size(body)  # Azure's 64 KiB limit, kept here so a run that works here works there
        with self._queues.lock:
            now = self._queues.clock()
            messages = self._messages()
            for body in bodies:
                expires = None if ttl_s == -1 else now + ttl_s
                messages[self._queues.new_id()] = _Message(body, now, now + delay_s, expires)

    def receive(self, max_messages: int = 1, *, visibility_timeout_s: int = 30) -> list[Received]:
        if not 1 <= max_messages <= MAX_RECEIVE:
            raise ValueError(f"max_messages must be 1..{MAX_RECEIVE}")
        taken: list[Received] = []
        with self._queues.lock:
            now = self._queues.clock()
            for message_id, message in self._messages().items():
                if len(taken) == max_messages:
                    break
                if message.visible_at > now:
                    continue
                message.visible_at = now + visibility_timeout_s
                message.dequeue_count += 1
                message.receipt = uuid.uuid4().hex
                taken.append(
                    Received(
                        id=str(message_id),
                        receipt=message.receipt,
                        body=message.body,
                        dequeue_count=message.dequeue_count,
                        inserted_at=datetime.fromtimestamp(message.inserted_at, UTC),
                        forgiven=message.forgiven,
                    )
                )
        return taken

    def renew(self, message: Received, visibility_timeout_s: int) -> Received:
        with self._queues.lock:
            stored = self._leased(message)
            stored.visible_at = self._queues.clock() + visibility_timeout_s
            stored.receipt = uuid.uuid4().hex
            return message.with_receipt(stored.receipt)

    def release(self, message: Received, delay_s: int = 0, *, count_delivery: bool = True) -> None:
        with self._queues.lock:
            stored = self._leased(message)
            stored.visible_at = self._queues.clock() + delay_s
            stored.receipt = uuid.uuid4().hex
            if not count_delivery:
                stored.dequeue_count -= 1
                stored.forgiven += 1

    def ack(self, message: Received) -> None:
        with self._queues.lock:
            self._leased(message)
            del self._messages()[int(message.id)]

    def dead_letter(self, message: Received, reason: str) -> None:
        record = PoisonRecord(
            body=message.body, reason=reason, attempts=message.dequeue_count, dead_lettered_at=now_iso()
        )
        text = record.encode()
        with self._queues.lock:  # one step: the move is atomic here
            self._leased(message)
            del self._messages()[int(message.id)]
            now = self._queues.clock()
            self._messages(self.poison_name)[self._queues.new_id()] = _Message(text, now, now, None)

    def depth(self) -> Depth:
        with self._queues.lock:
            now = self._queues.clock()
            messages = self._messages()
            visible = sum(1 for m in messages.values() if m.visible_at <= now)
            poison = len(self._messages(self.poison_name))
            return Depth(messages=len(messages), poison=poison, visible=visible, in_flight=len(messages) - visible)

    def purge(self) -> None:
        with self._queues.lock:
            self._messages().clear()

    def poison(self) -> MemoryQueue:
        return MemoryQueue(self.poison_name, self._queues)
