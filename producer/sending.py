"""Putting a run's messages on the queue: in chunks, each chunk retried through short outages.

`WorkQueue.send` of a chunk is one SQLite transaction on the embedded backend and 32 concurrent
requests on Azure, so chunks keep the account near its 2,000 messages/s per queue while bounding
what a failure can leave uncertain: when a chunk fails part-way, some of its messages may have
arrived, and the retry sends the whole chunk again. Those few duplicates are harmless (results
are written idempotently per batch); a lost message would not be.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

from producer.retry import RetryPolicy, retry_transient
from workpool.errors import TransientError
from workpool.queue import WorkQueue

CHUNK_MESSAGES = 128


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
        part = bodies[start : start + chunk]
        try:
            retry_transient(
                functools.partial(queue.send, part, ttl_s=ttl_s),
                f"send messages {start + 1}-{start + len(part)} of {len(bodies)} to queue {queue.name}",
                policy,
                sleep=sleep,
            )
        except TransientError as exc:
            raise SendIncomplete(f"sent {sent} of {len(bodies)} messages, then: {exc}", sent) from None
        sent += len(part)
        on_sent(len(part))
    return sent
