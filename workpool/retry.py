"""Waiting before trying again: one `Backoff` (capped exponential, full jitter) for every retry.

Every pause before a retry in the project comes from `Backoff`: transient storage errors
(`retry_transient`: a half-sent run, a scored batch whose results must be written, an image to
fetch, a consumer waiting for its storage account at start-up), a failed batch's release delay,
the prefetcher's polls while storage is down, the looks of `wait`, `launch --wait` and
`status --watch` through an outage, the autoscaler's failed ticks, and the restarts of a process
in a crash loop (workpool/processes/restarts.py). Steady polls that find nothing wrong keep
their fixed period: they are not retries.

Full jitter (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/): the
pause before retry number `attempt` (0 for the first) is drawn uniformly from
`[0, min(cap, base * 2**attempt)]`. Without it, 32 nodes that lost storage in the same second
retry in the same second, again and again, into the storage account's request limit; with it
their retries spread over the whole window. The random source is seedable for tests.

`retry_transient` is the longer, outer patience of code that has real work in hand (the SDK
already retries a request a couple of times within seconds): a storage account that blinks for
15 s costs a pause, not the work. Producer and consumer share it, each with its own policy.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from workpool.errors import TransientError

T = TypeVar("T")
log = logging.getLogger(__name__)

_MAX_DOUBLINGS = 64  # 2**64 times any base is past every cap; keeps the float finite


@dataclass
class Backoff:
    """Capped exponential back-off with full jitter: `delay_s(attempt)` is uniform in
    `[0, min(cap_s, base_s * 2**attempt)]`, `attempt` counting from 0."""

    base_s: float
    cap_s: float
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError(f"back-off base and cap must be >= 0, got base {self.base_s} and cap {self.cap_s}")

    def ceiling_s(self, attempt: int) -> float:
        """The longest pause before retry `attempt` (the window its jittered pause falls in)."""
        return min(self.cap_s, self.base_s * 2.0 ** min(max(attempt, 0), _MAX_DOUBLINGS))

    def delay_s(self, attempt: int) -> float:
        """The pause before retry `attempt`: anywhere from 0 up to its ceiling."""
        return self.rng.uniform(0.0, self.ceiling_s(attempt))

    def whole_seconds(self, attempt: int) -> int:
        """`delay_s` rounded up to whole seconds (a queue's visibility delay), at least 1 when
        the ceiling is positive: a failed batch never comes straight back."""
        return math.ceil(self.delay_s(attempt)) or (1 if self.ceiling_s(attempt) > 0 else 0)


@dataclass(frozen=True)
class RetryPolicy:
    first_delay_s: float = 0.5  # the back-off's base: the first pause is up to this long
    max_delay_s: float = 8.0  # its cap
    give_up_after_s: float = 120.0  # of consecutive failure of one operation

    def backoff(self, rng: random.Random | None = None) -> Backoff:
        return Backoff(self.first_delay_s, self.max_delay_s, rng or random.Random())


def retry_transient(
    operation: Callable[[], T],
    what: str,
    policy: RetryPolicy = RetryPolicy(),
    *,
    stop: threading.Event | None = None,
    log_level: int = logging.WARNING,
    sleep: Callable[[float], object] = time.sleep,  # e.g. a stop event's wait: a stop ends the pause
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    """Run `operation`; on `TransientError` wait (`policy`'s jittered back-off) and try again
    until `give_up_after_s` has passed.

    Permanent errors pass straight through. The last transient error is re-raised when patience
    runs out, or at once when `stop` is set (a worker shutting down leaves the rest to the
    queue), so the caller can say what was left undone.
    """
    backoff = policy.backoff(rng)
    started = clock()
    attempt = 0
    while True:
        try:
            return operation()
        except TransientError as exc:
            waited = clock() - started
            delay = backoff.delay_s(attempt)
            if (stop is not None and stop.is_set()) or waited + delay > policy.give_up_after_s:
                give_up_level = log_level if log_level < logging.WARNING else logging.ERROR
                tries = attempt + 1
                log.log(give_up_level, "%s: giving up after %d attempts over %.0f s: %s", what, tries, waited, exc)
                raise
            log.log(
                log_level, "%s: storage unreachable, retrying in %.1f s (attempt %d): %s", what, delay, attempt + 2, exc
            )
            sleep(delay)
            attempt += 1
