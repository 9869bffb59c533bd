"""The pool event log: append-only, one object per event, readable in order from any machine.

Runs on both result stores (a local directory and Azurite's blob container).
"""

from __future__ import annotations

import base64
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from workpool.pool_events import (
    RECORD_WAIT_S,
    PoolEvent,
    events_prefix,
    last_recorded_size,
    node_seconds,
    read_pool_events,
    record_pool_event,
    record_size_change,
)
from workpool.settings import Settings, load_settings
from workpool.storage import open_result_store

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_events_come_back_in_time_order_with_every_field(settings: Settings) -> None:
    # Given events recorded out of order
    later = PoolEvent(kind="scale", queue=settings.queue, at=at(60), backend="local", nodes_before=2, nodes_after=4)
    first = PoolEvent(
        kind="autoscale",
        queue=settings.queue,
        at=at(0),
        backend="azure-batch",
        nodes_before=0,
        nodes_after=2,
        reason="backlog 12 batches",
        inputs={"backlog": 12, "in_flight": 0, "rate": None},
    )
    preempt = PoolEvent(kind="preempt", queue=settings.queue, at=at(30), backend="azure-batch", node="vm-7")
    for event in (later, first, preempt):
        assert record_pool_event(settings, event)
    # When the log is read
    events = read_pool_events(settings, settings.queue)
    # Then they are in time order, whole
    assert events == [first, preempt, later]
    assert events[0].inputs == {"backlog": 12, "in_flight": 0, "rate": None}
    # and `since` skips the older ones by their names alone
    assert read_pool_events(settings, settings.queue, since=at(30)) == [preempt, later]


def test_another_queue_has_its_own_log_and_a_missing_store_has_none(settings: Settings) -> None:
    assert read_pool_events(settings, settings.queue) == []  # nothing recorded yet, no store
    record_pool_event(settings, PoolEvent(kind="launch", queue=settings.queue, nodes_after=1))
    assert read_pool_events(settings, "other-queue") == []
    assert len(read_pool_events(settings, settings.queue)) == 1


def test_concurrent_writers_lose_no_event(settings: Settings) -> None:
    # Given the autoscaler, a scale from another shell and preempted nodes recording at once
    def one(i: int) -> bool:
        return record_pool_event(settings, PoolEvent(kind="preempt", queue=settings.queue, at=T0, node=f"vm-{i}"))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, range(24)))
    # Then every event is there, even those stamped with the same microsecond
    assert sorted(e.node or "" for e in read_pool_events(settings, settings.queue)) == sorted(
        f"vm-{i}" for i in range(24)
    )


def test_a_damaged_event_is_skipped_not_fatal(settings: Settings) -> None:
    record_pool_event(settings, PoolEvent(kind="launch", queue=settings.queue, at=at(0), nodes_after=3))
    store = open_result_store(settings)
    store.write(events_prefix(settings.queue) + "20261130T120001.000000Z-dead.json", b'{"kind": "launch", "que')
    assert [e.nodes_after for e in read_pool_events(settings, settings.queue)] == [3]


def test_size_changes_read_their_before_from_the_log(settings: Settings) -> None:
    assert last_recorded_size(settings, settings.queue) == 0
    record_size_change(settings, "launch", "local", 2, at=at(0))
    record_pool_event(settings, PoolEvent(kind="preempt", queue=settings.queue, at=at(5), node="vm-1"))
    record_size_change(settings, "scale", "local", 5, at=at(10))
    record_size_change(settings, "teardown", "local", 0, at=at(20))
    events = read_pool_events(settings, settings.queue)
    assert [(e.kind, e.nodes_before, e.nodes_after) for e in events] == [
        ("launch", 0, 2),
        ("preempt", None, None),
        ("scale", 2, 5),
        ("teardown", 5, 0),
    ]


@pytest.mark.parametrize(
    ("steps", "start", "end", "expected"),
    [
        ([], 0, 100, 0.0),  # no pool at all
        ([(0, 2)], 0, 100, 200.0),  # two nodes all along
        ([(10, 2), (40, 4), (70, 0)], 0, 100, 2 * 30 + 4 * 30),  # launch, scale up, teardown
        ([(-50, 3)], 0, 10, 30.0),  # launched before the window: only the window counts
        ([(0, 1), (50, 3)], 20, 60, 1 * 30 + 3 * 10),  # window inside the steps
        ([(0, 4)], 10, 10, 0.0),  # empty window
        ([(0, 2), (200, 5)], 0, 100, 200.0),  # a change after the window does not count
    ],
)
def test_node_seconds_integrate_the_size_over_the_window(
    steps: list[tuple[float, int]], start: float, end: float, expected: float
) -> None:
    events = [PoolEvent(kind="scale", queue="q", at=at(t), nodes_after=n) for t, n in steps]
    events.insert(0, PoolEvent(kind="preempt", queue="q", at=at(-1), node="ignored"))  # changes no size
    assert node_seconds(events, at(start), at(end)) == pytest.approx(expected)


def test_an_unreachable_store_delays_a_size_change_by_at_most_a_few_seconds(tmp_path: Path) -> None:
    # Given storage that nothing answers (a closed port: the SDK would retry for many seconds)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = base64.b64encode(b"k" * 32).decode()
    settings = load_settings(
        home=tmp_path,
        connection_string=f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;",
    )
    # When a launch records its event, the record gives up instead of holding the command
    started = time.monotonic()
    assert record_size_change(settings, "launch", "local", 2) is False
    assert time.monotonic() - started < RECORD_WAIT_S + 5
