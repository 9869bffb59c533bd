"""The autoscaling policy, a pure function: tables of inputs → pool size (and the reason's kind)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestration.autoscale.deadline import parse_deadline
from orchestration.autoscale.policy import Limits, Observation, decide, parse_range
from orchestration.autoscale.rate import measure_rate
from workpool.errors import UsageError
from workpool.runs import BatchRecord

LIMITS = Limits(min_nodes=0, max_nodes=10, batches_per_node=4, idle_s=60, cooldown_s=30)
NOW = 1_000.0

# (case, current, backlog, in_flight, idle_since, last_change_at, rate per node, deadline in s, target, kind)
TABLE = [
    # activation and scale-out from the visible backlog
    ("empty queue, no pool: nothing starts", 0, 0, 0, NOW - 5, None, None, None, 0, "queue empty"),
    ("first message activates one node", 0, 1, 0, None, None, None, None, 1, "activate"),
    ("backlog 9 at 4 per node → 3", 0, 9, 0, None, None, None, None, 3, "activate"),
    ("scale out is not held by the cool-down", 2, 20, 8, None, NOW - 1, None, None, 5, "scale out"),
    ("max caps the backlog rule", 3, 400, 12, None, None, None, None, 10, "scale out"),
    # in flight: being worked on, never backlog
    ("in flight alone starts no node", 0, 0, 5, None, None, None, None, 0, "steady"),
    ("in flight holds the nodes that may hold it", 3, 0, 6, None, None, None, None, 3, "steady"),
    ("in flight never counts as backlog", 3, 4, 6, None, None, None, None, 3, "steady"),
    ("fewer in flight than nodes: shrink to them", 4, 0, 2, None, NOW - 100, None, None, 2, "scale in"),
    ("unknown split (Azure, ≥32 visible): every node busy", 5, 40, None, None, NOW - 100, None, None, 10, "scale out"),
    ("unknown split never shrinks a busy pool", 10, 8, None, None, NOW - 100, None, None, 10, "steady"),
    # cool-down on scale-in
    ("shrink waits for the cool-down", 4, 0, 1, None, NOW - 10, None, None, 4, "hold"),
    ("shrink after the cool-down", 4, 0, 1, None, NOW - 31, None, None, 1, "scale in"),
    # idle → zero
    ("empty for less than idle-s: hold", 3, 0, 0, NOW - 59, None, None, None, 3, "hold"),
    ("empty for idle-s: to zero", 3, 0, 0, NOW - 60, None, None, None, 0, "scale to zero"),
    ("empty and idle, but cooling down", 3, 0, 0, NOW - 100, NOW - 5, None, None, 3, "hold"),
    # deadline from the measured rate
    ("deadline asks more than the backlog rule", 1, 8, 2, None, None, 0.01, 200, 5, "scale out"),
    ("deadline met by the backlog rule already", 2, 8, 0, None, None, 1.0, 200, 2, "steady"),
    ("deadline capped at max", 1, 100, 0, None, None, 0.001, 100, 10, "scale out"),
    ("deadline passed: max", 1, 4, 0, None, None, 0.1, -5, 10, "scale out"),
    ("deadline without a measured rate: backlog rule", 0, 8, 0, None, None, None, 100, 2, "activate"),
    ("deadline with an empty queue changes nothing", 2, 0, 0, NOW - 61, None, 0.1, 100, 0, "scale to zero"),
]


@pytest.mark.parametrize(
    ("current", "backlog", "in_flight", "idle_since", "last_change_at", "rate", "deadline_in_s", "target", "kind"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_policy_table(
    current: int,
    backlog: int,
    in_flight: int | None,
    idle_since: float | None,
    last_change_at: float | None,
    rate: float | None,
    deadline_in_s: float | None,
    target: int,
    kind: str,
) -> None:
    obs = Observation(
        now=NOW,
        current=current,
        backlog=backlog,
        in_flight=in_flight,
        idle_since=idle_since,
        last_change_at=last_change_at,
        rate_per_node=rate,
        deadline_at=None if deadline_in_s is None else NOW + deadline_in_s,
    )
    decision = decide(obs, LIMITS)
    assert decision.target == target, decision.reason
    assert decision.reason.startswith(kind), decision.reason


# (case, limits, current, backlog, in_flight, idle_since, target)
MIN_TABLE = [
    ("min 2 on an empty queue: raised to it", Limits(2, 5, 4, 60, 30), 0, 0, 0, NOW - 100, 2),
    ("min 2, idle: stays at 2, never zero", Limits(2, 5, 4, 60, 30), 4, 0, 0, NOW - 100, 2),
    ("min 2, one batch: min wins", Limits(2, 5, 4, 60, 30), 0, 1, 0, None, 2),
    ("one batch per node", Limits(0, 5, 1, 60, 30), 1, 3, 1, None, 3),
    ("idle-s 0: to zero as soon as empty", Limits(0, 5, 4, 0, 0), 2, 0, 0, NOW, 0),
]


@pytest.mark.parametrize(
    ("limits", "current", "backlog", "in_flight", "idle_since", "target"),
    [row[1:] for row in MIN_TABLE],
    ids=[row[0] for row in MIN_TABLE],
)
def test_policy_limits_table(
    limits: Limits, current: int, backlog: int, in_flight: int, idle_since: float | None, target: int
) -> None:
    obs = Observation(now=NOW, current=current, backlog=backlog, in_flight=in_flight, idle_since=idle_since)
    assert decide(obs, limits).target == target


def test_the_deadline_reason_names_its_inputs() -> None:
    obs = Observation(now=NOW, current=1, backlog=8, in_flight=2, rate_per_node=0.01, deadline_at=NOW + 200)
    reason = decide(obs, LIMITS).reason
    assert "deadline in 200 s" in reason and "10 batch(es)" in reason and "0.01 batches/s per node" in reason


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (lambda: Limits(min_nodes=-1, max_nodes=3), "--min"),
        (lambda: Limits(min_nodes=4, max_nodes=3), "--max"),
        (lambda: Limits(min_nodes=0, max_nodes=0), "--max"),
        (lambda: Limits(max_nodes=2, batches_per_node=0), "--batches-per-node"),
        (lambda: Limits(max_nodes=2, idle_s=-1), "--idle-s"),
        (lambda: Limits(max_nodes=2, cooldown_s=-1), "--cooldown-s"),
    ],
)
def test_bad_limits_name_the_flag(limits: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        limits()  # type: ignore[operator]


@pytest.mark.parametrize(("text", "expected"), [("0:3", (0, 3)), ("2:2", (2, 2)), (" 1 : 8 ", (1, 8))])
def test_parse_range(text: str, expected: tuple[int, int]) -> None:
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["3", "a:b", "1:2:3", "-1:3", ""])
def test_parse_range_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="MIN:MAX"):
        parse_range(text)


BASE = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20m", BASE + timedelta(minutes=20)),
        ("1h30m", BASE + timedelta(hours=1, minutes=30)),
        ("90s", BASE + timedelta(seconds=90)),
        ("2026-12-01T14:30Z", datetime(2026, 12, 1, 14, 30, tzinfo=UTC)),
        ("2026-12-01T14:30+01:00", datetime(2026, 12, 1, 13, 30, tzinfo=UTC)),
    ],
)
def test_parse_deadline(text: str, expected: datetime) -> None:
    assert parse_deadline(text, BASE) == expected


def test_a_time_of_day_is_the_next_such_moment() -> None:
    now = BASE.astimezone()
    later = (now + timedelta(minutes=5)).strftime("%H:%M")
    earlier = (now - timedelta(minutes=5)).strftime("%H:%M")
    assert timedelta(0) < parse_deadline(later, BASE) - BASE <= timedelta(minutes=5)
    assert timedelta(hours=23) < parse_deadline(earlier, BASE) - BASE < timedelta(hours=24)


@pytest.mark.parametrize("text", ["soon", "25:00", "20x", "m"])
def test_bad_deadlines_say_what_is_expected(text: str) -> None:
    with pytest.raises(UsageError, match="--deadline"):
        parse_deadline(text, BASE)


def _record(worker: str, batch: str, start_s: float, end_s: float, images: int = 10) -> BatchRecord:
    return BatchRecord(
        run_id="r",
        batch_id=batch,
        worker=worker,
        attempt=1,
        images=images,
        images_ok=images,
        images_failed=0,
        dequeued_at=BASE + timedelta(seconds=start_s),
        scored_at=BASE + timedelta(seconds=end_s),
        acked_at=BASE + timedelta(seconds=end_s),
        images_per_s=images / (end_s - start_s),
    )


def test_rate_is_batches_per_busy_worker_second() -> None:
    # Worker a: three 2-second batches back to back, the next prefetched while one is scored
    # (overlapping spans: busy 0..6 = 6 s). Worker b: one 4-second batch, then idle.
    records = [
        _record("a", "b1", 0, 2),
        _record("a", "b2", 1, 4),
        _record("a", "b3", 3, 6),
        _record("b", "b4", 0, 4),
    ]
    rate = measure_rate(records, BASE + timedelta(seconds=10), window_s=60)
    assert rate is not None
    assert rate.batches == 4 and rate.workers == 2
    assert rate.batches_per_worker_s == pytest.approx(4 / 10)
    assert rate.images_per_worker_s == pytest.approx(40 / 10)
    assert rate.per_node(2) == pytest.approx(0.8)


def test_rate_looks_at_the_window_only() -> None:
    records = [_record("a", "old", 0, 10), _record("a", "new", 100, 102)]
    rate = measure_rate(records, BASE + timedelta(seconds=110), window_s=30)
    assert rate is not None and rate.batches == 1 and rate.batches_per_worker_s == pytest.approx(0.5)
    assert measure_rate(records, BASE + timedelta(seconds=500), window_s=30) is None
