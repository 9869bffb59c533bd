"""Azure Storage Queue backend (Azure and Azurite alike), over azure-storage-queue.

Message bodies are sent as plain text (no base64), so any Storage Queue client can read them.
`send` of many messages runs concurrent requests: one queue takes ~2,000 messages/s, one
request at a time reaches a small fraction of that.

Azure counts every delivery in `dequeue_count` and offers no way to take one back, so a
forgiven delivery (`release(..., count_delivery=False)`) is written into the message itself:
the release rewrites its content as `workpool-forgiven:<n>` + newline + the original body
(update_message can change content), and `receive` strips that line again, reporting
`dequeue_count` less the `n` forgiven deliveries. Bodies without the line (everything a
producer sends) are read unchanged. A body too close to the 64 KiB limit to carry the line is
released counted instead, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, QueueMessage, QueueServiceClient

from workpool.azure_clients import azure_errors
from workpool.errors import LeaseLostError, PartialSendError, StorageUnavailableError
from workpool.messages import MAX_MESSAGE_BYTES, check_size, encoded_size
from workpool.queue.base import MAX_RECEIVE, Depth, PoisonRecord, Received, Removal, WorkQueue, now_iso

log = logging.getLogger(__name__)

SEND_CONCURRENCY = 32
_FORGIVEN = re.compile(r"\Aworkpool-forgiven:(\d+)\n")


def with_forgiven(body: str, forgiven: int) -> str:
    """The content that carries `forgiven` deliveries beside the original body."""
    return f"workpool-forgiven:{forgiven}\n{body}" if forgiven else body


def split_forgiven(content: str) -> tuple[str, int]:
    """(original body, forgiven deliveries) of a message's content."""
    match = _FORGIVEN.match(content)
    if match is None:
        return content, 0
    return content[match.end() :], int(match.group(1))


class AzureQueue(WorkQueue):
    def __init__(self, service: QueueServiceClient, name: str) -> None:
        self.name = name
        self._service = service
        self._client: QueueClient = service.get_queue_client(name)

    def create(self) -> None:
        for client in (self._client, self._service.get_queue_client(self.poison_name)):
            with azure_errors(f"create queue {client.queue_name}"), contextlib.suppress(ResourceExistsError):
                client.create_queue()

    def send(self, bodies: Sequence[str], *, ttl_s: int = -1, delay_s: int = 0) -> None:
        for body in bodies:
            check_size(body)  # refused here, before any is sent, rather than as a 413 halfway through

        def send_one(body: str) -> None:
            with azure_errors(f"send to queue {self.name}"):
                self._client.send_message(body, time_to_live=ttl_s, visibility_timeout=delay_s or None)

        if len(bodies) <= 1:
            for body in bodies:
                send_one(body)
            return
        with ThreadPoolExecutor(max_workers=min(SEND_CONCURRENCY, len(bodies))) as pool:
            futures = [pool.submit(send_one, body) for body in bodies]
        failed = [(i, exc) for i, f in enumerate(futures) if (exc := f.exception()) is not None]
        if not failed:
            return
        first = failed[0][1]
        if all(isinstance(exc, StorageUnavailableError) for _, exc in failed):
            # Say which bodies did not arrive, so the caller's retry does not duplicate the others.
            unsent = [i for i, _ in failed]
            raise PartialSendError(f"{first} ({len(unsent)} of {len(bodies)} not sent)", unsent) from None
        raise first

    def receive(self, max_messages: int = 1, *, visibility_timeout_s: int = 30) -> list[Received]:
        if not 1 <= max_messages <= MAX_RECEIVE:
            raise ValueError(f"max_messages must be 1..{MAX_RECEIVE}")
        with azure_errors(f"receive from queue {self.name}"):
            # One request only: iterating the pager would keep receiving (and leasing) pages.
            pages = self._client.receive_messages(
                messages_per_page=max_messages, visibility_timeout=visibility_timeout_s
            ).by_page()
            page = list(next(pages, []))
        return [_received(m) for m in page]

    def renew(self, message: Received, visibility_timeout_s: int) -> Received:
        with azure_errors(f"renew message {message.id} on {self.name}"):
            updated = self._client.update_message(message.id, message.receipt, visibility_timeout=visibility_timeout_s)
        return message.with_receipt(str(updated.pop_receipt))

    def release(self, message: Received, delay_s: int = 0, *, count_delivery: bool = True) -> None:
        content = None  # None: the content stays as it is
        if not count_delivery:
            content = with_forgiven(message.body, message.forgiven + 1)
            if encoded_size(content) > MAX_MESSAGE_BYTES:
                log.warning("message %s is too large to mark its delivery forgiven; released counted", message.id)
                content = None
        with azure_errors(f"release message {message.id} on {self.name}"):
            self._client.update_message(message.id, message.receipt, visibility_timeout=delay_s, content=content)

    def ack(self, message: Received) -> None:
        with azure_errors(f"ack message {message.id} on {self.name}"):
            self._client.delete_message(message.id, message.receipt)

    def dead_letter(self, message: Received, reason: str) -> None:
        record = PoisonRecord(
            body=message.body, reason=reason, attempts=message.dequeue_count, dead_lettered_at=now_iso()
        )
        # Send first, delete second: a crash in between leaves a duplicate, never a loss.
        with azure_errors(f"dead-letter to queue {self.poison_name}"):
            self._service.get_queue_client(self.poison_name).send_message(record.encode(), time_to_live=-1)
        self.ack(message)

    def depth(self) -> Depth:
        counts = []
        for name in (self.name, self.poison_name):
            with azure_errors(f"count queue {name}"):
                counts.append(
                    int(self._service.get_queue_client(name).get_queue_properties().approximate_message_count or 0)
                )
        # The count includes invisible (leased) messages; a peek sees visible ones only, at most 32.
        with azure_errors(f"peek queue {self.name}"):
            visible = len(self._client.peek_messages(max_messages=MAX_RECEIVE)) if counts[0] else 0
        if visible >= MAX_RECEIVE:
            return Depth(messages=counts[0], poison=counts[1])  # 32 or more visible: the split is unknown
        # The count is read first: a message sent in between is seen by the peek only.
        visible = min(visible, counts[0])
        return Depth(messages=counts[0], poison=counts[1], visible=visible, in_flight=counts[0] - visible)

    def remove_where(self, match: Callable[[str], bool], *, hold_s: int = 300) -> Removal:
        """A message is deleted by receiving it: walk the visible messages once, deleting those that
        match and holding the others (so they are not seen twice), then release those at once with
        their delivery forgiven. In-flight messages cannot be seen, so `in_flight` is None."""
        removed = 0
        held: dict[str, Received] = {}
        try:
            while True:
                page = self.receive(MAX_RECEIVE, visibility_timeout_s=hold_s)
                fresh = [m for m in page if m.id not in held]
                if not fresh:  # nothing visible left, or only what we hold (its hold ran out)
                    held.update((m.id, m) for m in page)
                    break
                for message in fresh:
                    if not match(message.body):
                        held[message.id] = message
                        continue
                    with contextlib.suppress(LeaseLostError):  # gone meanwhile: removed all the same
                        self.ack(message)
                    removed += 1
        finally:
            for message in held.values():
                try:
                    self.release(message, count_delivery=False)
                except (LeaseLostError, StorageUnavailableError) as exc:
                    log.warning("message %s not released (%s); visible again within %d s", message.id, exc, hold_s)
        return Removal(removed=removed, in_flight=None)

    def purge(self) -> None:
        with azure_errors(f"purge queue {self.name}"):
            self._client.clear_messages()

    def poison(self) -> AzureQueue:
        return AzureQueue(self._service, self.poison_name)

    def close(self) -> None:
        self._client.close()


def _received(m: QueueMessage) -> Received:
    inserted = m.inserted_on or datetime.now(UTC)
    body, forgiven = split_forgiven(str(m.content))
    return Received(
        id=str(m.id),
        receipt=str(m.pop_receipt),
        body=body,
        dequeue_count=max(int(m.dequeue_count or 0) - forgiven, 1),
        inserted_at=inserted,
        forgiven=forgiven,
    )
