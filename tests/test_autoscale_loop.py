"""The autoscaler's loop on a hand-moved clock: real queues (embedded and Azurite) and result
stores, a launcher that only keeps its size (the loop's only call into a backend is `scale`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestration.autoscale.loop import Autoscaler, PoolGoneError
from orchestration.autoscale.policy import Limits
from orchestration.autoscale.state import read_state
from orchestration.launcher import ClusterState, Launcher, NodeInfo, PlannedRequest
from workpool.errors import UsageError
from workpool.pool_events import read_pool_events
from workpool.queue import WorkQueue
from workpool.queue.embedded import EmbeddedQueue
from workpool.runs import BatchRecord, Manifest, ResultRow, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SizedLauncher(Launcher):
    """A pool that is just its size: every `scale` is recorded and takes effect at once."""

    name = "sized"

    def __init__(self, size: int = 0) -> None:
        self.size = size
        self.calls: list[int] = []
        self.gone = False

    def launch(self, nodes: int) -> None:
        self.size = nodes

    def scale(self, nodes: int) -> None:
        if self.gone:
            raise UsageError("no pool is running")
        self.calls.append(nodes)
        self.size = nodes

    def state(self) -> ClusterState:
        return ClusterState(self.name, self.size, [NodeInfo(f"n{i}", "running") for i in range(self.size)])

    def teardown(self, delete: bool = False) -> None:
        self.size = 0

    def describe(self, nodes: int) -> list[PlannedRequest]:
        return []


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(settings: Settings, backend: str, clock: Clock) -> WorkQueue:
    # The embedded queue runs on the test's clock, so leases and visibility follow it too.
    if backend == "embedded":
        q: WorkQueue = EmbeddedQueue(settings.home / "queue.sqlite3", settings.queue, clock=clock)
    else:
        from workpool.queue import open_queue

        q = open_queue(settings)
    q.create()
    return q


def scaler(settings: Settings, queue: WorkQueue, launcher: Launcher, clock: Clock, **limits: float) -> Autoscaler:
    runs = RunStore(open_result_store(settings))
    runs.store.ensure()
    lim = Limits(**{"min_nodes": 0, "max_nodes": 3, "batches_per_node": 4, "idle_s": 20, "cooldown_s": 10, **limits})
    return Autoscaler(settings, launcher, queue, runs, lim, interval_s=1, clock=clock)


def test_from_zero_to_the_backlog_held_by_work_in_flight_and_back_to_zero(
    settings: Settings, queue: WorkQueue, clock: Clock, backend: str
) -> None:
    launcher = SizedLauncher()
    auto = scaler(settings, queue, launcher, clock)

    # Given an empty queue: no node
    assert auto.step().decision.target == 0 and launcher.calls == []

    # When ten batches arrive: activation, ceil(10 / 4) = 3 nodes at once
    queue.send([f"b{i}" for i in range(10)])
    tick = auto.step()
    assert launcher.calls == [3] and tick.changed and tick.decision.reason.startswith("activate")
    assert tick.inputs["backlog"] == 10 and tick.inputs["in_flight"] == 0

    # When consumers lease all ten: in flight holds the three nodes, it never asks for more
    leased = queue.receive(10, visibility_timeout_s=3600)
    clock.advance(30)
    tick = auto.step()
    assert (tick.inputs["backlog"], tick.inputs["in_flight"]) == (0, 10)
    assert tick.decision.target == 3 and launcher.calls == [3]

    # When all but two are acked: at most two nodes can be busy, the third goes (cool-down passed)
    for message in leased[:8]:
        queue.ack(message)
    tick = auto.step()
    assert launcher.calls == [3, 2] and tick.decision.reason.startswith("scale in")

    # When the last two are acked: the empty queue holds the pool for idle-s, then zero
    for message in leased[8:]:
        queue.ack(message)
    clock.advance(11)
    assert auto.step().decision.reason.startswith("hold: queue empty")
    clock.advance(19)
    assert auto.step().decision.target == 2
    clock.advance(1)
    tick = auto.step()
    assert launcher.calls == [3, 2, 0] and tick.decision.reason.startswith("scale to zero")

    # Then every change is in the pool's event log with the inputs it was based on
    events = [e for e in read_pool_events(settings, settings.queue) if e.kind == "autoscale"]
    assert [(e.nodes_before, e.nodes_after) for e in events] == [(0, 3), (3, 2), (2, 0)]
    assert events[0].inputs["backlog"] == 10 and events[1].inputs["in_flight"] == 2
    assert all(e.reason for e in events)
    # and `status` can show the last decision
    state = read_state(open_result_store(settings), settings.queue, now=clock.now)
    assert state is not None and state["running"]
    assert (state["target"], state["min"], state["max"]) == (0, 0, 3)
    assert state["reason"].startswith("scale to zero") and state["inputs"]["backlog"] == 0
    assert (state["last_change"]["from"], state["last_change"]["to"]) == (2, 0)


def test_a_deadline_asks_for_more_nodes_than_the_backlog_from_the_measured_rate(
    settings: Settings, queue: WorkQueue, clock: Clock
) -> None:
    # Given a run on this queue whose batches took 10 s each on one worker (0.1 batch/s)
    runs = RunStore(open_result_store(settings))
    runs.store.ensure()
    now = datetime.fromtimestamp(clock.now, UTC)
    batches = {f"b{i:03d}": [f"img{i}.png"] for i in range(20)}
    runs.write_manifest(
        Manifest(run_id="r1", source="/x", task="t", batch_size=1, queue=settings.queue, images=20, batches=batches)
    )
    for i in range(4):
        start = now - timedelta(seconds=40 - 10 * i)
        row = ResultRow(image=f"img{i}.png", status="ok", batch_id=f"b{i:03d}", worker="n0")
        runs.write_results("r1", f"b{i:03d}", [row])
        runs.write_batch_record(
            BatchRecord(
                run_id="r1",
                batch_id=f"b{i:03d}",
                worker="n0",
                attempt=1,
                images=1,
                images_ok=1,
                images_failed=0,
                dequeued_at=start,
                scored_at=start + timedelta(seconds=10),
                acked_at=start + timedelta(seconds=10),
                images_per_s=0.1,
            )
        )
    queue.send([f"m{i}" for i in range(8)])  # 8 visible batches: the backlog rule asks for 2 nodes
    launcher = SizedLauncher(1)
    limits = {"max_nodes": 6, "batches_per_node": 4}

    # Without a deadline: 2 nodes
    plain = scaler(settings, queue, launcher, clock, **limits)
    assert plain.step().decision.target == 2

    # With 20 s left: 8 batches at 0.1 batch/s per node need 4 nodes
    launcher = SizedLauncher(1)
    auto = scaler(settings, queue, launcher, clock, **limits)
    auto.deadline = now + timedelta(seconds=20)
    tick = auto.step()
    assert tick.decision.target == 4, tick.decision.reason
    assert tick.inputs["rate_batches_per_node_s"] == pytest.approx(0.1)
    assert tick.inputs["deadline_in_s"] == pytest.approx(20)
    assert "deadline in 20 s" in tick.decision.reason

    # With 5 s left it would need 16: capped at --max
    auto.deadline = now + timedelta(seconds=5)
    assert auto.step().decision.target == 6


def test_a_pool_torn_down_under_the_autoscaler_ends_its_loop(
    settings: Settings, queue: WorkQueue, clock: Clock
) -> None:
    launcher = SizedLauncher()
    auto = scaler(settings, queue, launcher, clock)
    launcher.gone = True
    queue.send(["m"])
    with pytest.raises(PoolGoneError, match="no pool is running"):
        auto.step()
