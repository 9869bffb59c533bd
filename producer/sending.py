"""Putting a run's messages on the queue: in chunks, each chunk retried through short outages.

`WorkQueue.send` of a chunk is one SQLite transaction on the embedded backend (all or nothing)
and 32 concurrent requests on Azure, which keeps the account near its 2,000 messages/s per queue.
When only part of a chunk arrives, the queue says which bodies did not (`PartialSendError`) and
only those are retried, so an outage mid-run neither loses nor duplicates messages. (A request
whose response was lost may still have arrived; its duplicate is harmless, since results are
written idempotently per batch. A lost message would not be harmless.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from workpool.errors import PartialSendError, TransientError
from workpool.queue import WorkQueue
from workpool.retry import RetryPolicy, retry_transient

# Big enough that the pauses between chunks (waiting for the slowest of 32 requests) stay small;
# a failed chunk costs nothing extra, since only its unsent part is retried.
CHUNK_MESSAGES = 512


class SendIncomplete(TransientError):
    """The queue stayed unreachable past the retry budget; `sent` messages made it."""

    def __init__(self, message: str, sent: int) -> None:
        super().__init__(message)
        self.sent = sent


def send_all(
    queue: WorkQueue,
    bodies: Sequence[str],
    *,
    ttl_s: int,
    on_sent: Callable[[int], None] = lambda n: None,
    chunk: int = CHUNK_MESSAGES,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send every body, in order of chunks; returns how many were sent.

    Raises `SendIncomplete` (retryable, exit code 1) naming how many were sent when one chunk
    keeps failing for longer than the policy allows.
    """
    sent = 0
    for start in range(0, len(bodies), chunk):
        part = list(bodies[start : start + chunk])
        pending = part

        def attempt() -> None:
            nonlocal pending
            try:
                queue.send(pending, ttl_s=ttl_s)
            except PartialSendError as exc:
                pending = [pending[i] for i in exc.unsent]  # the rest arrived: retry only these
                raise

        try:
            retry_transient(
                attempt,
                f"send messages {start + 1}-{start + len(part)} of {len(bodies)} to queue {queue.name}",
                policy,
                sleep=sleep,
            )
        except TransientError as exc:
            sent += len(part) - len(pending)
            raise SendIncomplete(f"sent {sent} of {len(bodies)} messages, then: {exc}", sent) from None
        sent += len(part)
        on_sent(len(part))
    return sent
