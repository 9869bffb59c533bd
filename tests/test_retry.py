"""One back-off for every retry (workpool/retry.py): capped exponential with full jitter.

The point of the jitter is the pool, not the node: 32 nodes that lost storage in the same second
must not retry in the same instants, again and again, into the account's request limit. The
simulations here run the real `retry_transient` on a simulated clock (no sleeping), with seeded
random sources, so they are exact and instant.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import pytest

from workpool.errors import StorageUnavailableError
from workpool.processes.restarts import CrashLoopBackoff
from workpool.retry import Backoff, RetryPolicy, retry_transient

NODES = 32
OUTAGE_S = 60.0
POLICY = RetryPolicy(first_delay_s=0.5, max_delay_s=8.0, give_up_after_s=600.0)


class Lockstep(random.Random):
    """What a back-off without jitter does: always the whole ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def retry_times(node: int, rng: random.Random) -> list[float]:
    """When one node tries its write, from the moment storage went down until it came back."""
    now = [0.0]
    times: list[float] = []

    def write() -> str:
        times.append(now[0])
        if now[0] < OUTAGE_S:
            raise StorageUnavailableError(f"node {node}: 503 server busy")
        return "written"

    def sleep(seconds: float) -> None:
        now[0] += seconds

    result = retry_transient(
        write, "write results", POLICY, sleep=sleep, clock=lambda: now[0], rng=rng, log_level=logging.DEBUG
    )
    assert result == "written"
    return times


def busiest_second(schedules: list[list[float]], after_s: float) -> int:
    """The most tries any one second holds, across every node, from `after_s` on."""
    seconds = Counter(int(t) for times in schedules for t in times if t >= after_s)
    return max(seconds.values())


def test_32_nodes_retrying_through_an_outage_spread_their_tries_instead_of_moving_in_lockstep() -> None:
    seeds = random.Random(2026)
    jittered = [retry_times(n, random.Random(seeds.random())) for n in range(NODES)]
    lockstep = [retry_times(n, Lockstep()) for n in range(NODES)]

    # Without jitter every node tries at the same instants: all 32 hit the account together,
    # every 8 s, and all come back in the same second
    assert all(times == lockstep[0] for times in lockstep)
    assert busiest_second(lockstep, after_s=10) == NODES
    assert len({times[-1] for times in lockstep}) == 1

    # With full jitter, once the ceiling has grown (after ~10 s) the tries spread over the window
    # (about 8 a second on average, 32 nodes each trying every 4 s): no second holds more than
    # half the pool...
    assert busiest_second(jittered, after_s=10) <= NODES // 2
    # ...and the nodes come back one by one over the last window (up to 8 s), not all at once
    recovered = sorted(times[-1] for times in jittered)
    assert len(set(recovered)) == NODES
    assert all(OUTAGE_S <= t <= OUTAGE_S + POLICY.max_delay_s for t in recovered)
    assert recovered[-1] - recovered[0] >= POLICY.max_delay_s / 2
    assert max(Counter(int(t) for t in recovered).values()) <= NODES // 3


def test_the_ceiling_doubles_from_the_base_up_to_the_cap_and_every_pause_lies_under_it() -> None:
    backoff = Backoff(base_s=0.5, cap_s=8.0, rng=random.Random(1))
    assert [backoff.ceiling_s(a) for a in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.ceiling_s(10_000) == 8.0  # no overflow on a long outage
    for attempt in range(12):
        pauses = [backoff.delay_s(attempt) for _ in range(200)]
        ceiling = backoff.ceiling_s(attempt)
        assert all(0 <= p <= ceiling for p in pauses)
        assert max(pauses) - min(pauses) > ceiling / 2  # drawn over the whole window


def test_a_seeded_backoff_repeats_itself() -> None:
    first = [Backoff(1.0, 30.0, random.Random(5)).delay_s(a) for a in range(8)]
    again = [Backoff(1.0, 30.0, random.Random(5)).delay_s(a) for a in range(8)]
    assert first == again


def test_a_queue_release_delay_is_whole_seconds_and_never_zero() -> None:
    backoff = Backoff(base_s=2.0, cap_s=300.0, rng=random.Random(9))
    delays = [backoff.whole_seconds(0) for _ in range(500)]
    assert set(delays) <= {1, 2} and set(delays) == {1, 2}
    assert all(1 <= backoff.whole_seconds(20) <= 300 for _ in range(100))


def test_a_negative_base_or_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="base and cap"):
        Backoff(base_s=-1, cap_s=1)


def test_a_crash_loop_waits_a_jittered_pause_from_its_second_quick_exit() -> None:
    restarts = CrashLoopBackoff(quick_failure_s=10, max_backoff_s=30, rng=random.Random(4))
    # The first quick exit is not a loop yet; a process killed by a signal is replaced at once
    assert restarts.delay_s("n1", code=1, ran_s=0.5) == 0.0
    assert restarts.delay_s("n2", code=-9, ran_s=0.5) == 0.0
    pauses = [restarts.delay_s("n1", code=1, ran_s=0.5) for _ in range(8)]
    ceilings = [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert all(0 <= p <= c for p, c in zip(pauses, ceilings, strict=True)), pauses
    # One that ran long enough is healthy again: the next exit starts the count afresh
    assert restarts.delay_s("n1", code=1, ran_s=60.0) == 0.0
    assert restarts.delay_s("n1", code=1, ran_s=0.5) == 0.0
