"""Riding out storage outages: retry transient errors with capped exponential backoff.

The SDK already retries a request a couple of times within seconds; this is the longer, outer
patience of code that has real work in hand (a half-sent run, a scored batch whose results
must be written, an image to fetch), so a storage account that blinks for 15 s costs a pause,
not the work. Producer and consumer share it, each with its own policy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from workpool.errors import TransientError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0
    give_up_after_s: float = 120.0  # of consecutive failure of one operation


def retry_transient(
    operation: Callable[[], T],
    what: str,
    policy: RetryPolicy = RetryPolicy(),
    *,
    stop: threading.Event | None = None,
    log_level: int = logging.WARNING,
    sleep: Callable[[float], object] = time.sleep,  # e.g. a stop event's wait: a stop ends the pause
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run `operation`; on `TransientError` wait and try again until `give_up_after_s` has passed.

    Permanent errors pass straight through. The last transient error is re-raised when patience
    runs out, or at once when `stop` is set (a worker shutting down leaves the rest to the
    queue), so the caller can say what was left undone.
    """
    started = clock()
    delay = policy.first_delay_s
    attempt = 1
    while True:
        try:
            return operation()
        except TransientError as exc:
            waited = clock() - started
            if (stop is not None and stop.is_set()) or waited + delay > policy.give_up_after_s:
                give_up_level = log_level if log_level < logging.WARNING else logging.ERROR
                log.log(give_up_level, "%s: giving up after %d attempts over %.0f s: %s", what, attempt, waited, exc)
                raise
            log.log(
                log_level, "%s: storage unreachable, retrying in %.1f s (attempt %d): %s", what, delay, attempt + 1, exc
            )
            sleep(delay)
            delay = min(delay * 2, policy.max_delay_s)
            attempt += 1
