"""A consumer process told its VM is being preempted gives its batches back at once, uncounted.

Real parts: `consumer run` processes, the queue (embedded and Azurite), and a local HTTP server
that serves real-shaped Scheduled Events documents as the VM's metadata service would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import backend_env
from tests.support.faults_pool import check_every_image_once, enqueue_run, staged_images
from tests.support.scheduled_events import ScheduledEventsServer
from tests.support.waiting import wait_for
from workpool.pool_events import read_pool_events
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SLEEP_TASK = "consumer.tasks.examples:SleepTask"


class Consumer:
    """`python -m consumer run` with its output in files (pipes could fill and block it)."""

    def __init__(self, settings: Settings, folder: Path, worker_id: str, *args: str, events_url: str | None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / f"{worker_id}.log"
        env = backend_env(settings) | {"WORKPOOL_EXAMPLE_SLEEP_S": "0.5", "PYTHONPATH": str(REPO)}
        if events_url is not None:
            env["WORKPOOL_SCHEDULED_EVENTS_URL"] = events_url
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "consumer", "run", "--worker-id", worker_id, "--max-attempts", "1",
                 "--visibility-timeout-s", "60", "--prefetch-batches", "2", "--log-level", "DEBUG", *args],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def consumers() -> Iterator[list[Consumer]]:
    started: list[Consumer] = []
    yield started
    for consumer in started:
        consumer.kill()


@pytest.fixture
def vm_a() -> Iterator[ScheduledEventsServer]:
    server = ScheduledEventsServer("spot-vm-a").start()
    yield server
    server.stop()


def test_a_preempted_consumer_releases_its_batches_at_once_and_they_are_not_poisoned(
    settings: Settings, vm_a: ScheduledEventsServer, consumers: list[Consumer], tmp_path: Path
) -> None:
    # Given a run of 6 slow batches (2 s each) and consumer A on spot VM A, holding three of them
    # under 60 s leases (one scoring, two prefetched), with --max-attempts 1
    source, names = staged_images(settings, tmp_path / "images", 24)
    enqueue_run(settings, source, "spot-1", "--task", SLEEP_TASK, "--batch-size", "4")
    queue = open_queue(settings)
    a = Consumer(settings, tmp_path, "vm-a", events_url=vm_a.url)
    consumers.append(a)
    wait_for(lambda: (queue.depth().in_flight or 0) >= 3, timeout_s=60, what="consumer A to hold three batches")

    # When Azure announces A's eviction
    event_id = vm_a.announce("Preempt")

    # Then within a second of reading the notice A has released every batch it held: none in flight
    wait_for(lambda: event_id in vm_a.first_served_at, timeout_s=10, what="A to read the notice")
    wait_for(lambda: queue.depth().in_flight == 0, timeout_s=10, interval_s=0.02, what="A's batches released")
    released_after_s = time.monotonic() - vm_a.first_served_at[event_id]
    print(f"PREEMPT released_after_s={released_after_s:.3f}")
    assert released_after_s < 1.5  # "within a second", plus the probe's own lag on a busy machine
    wait_for(lambda: "not counted as attempts" in a.text(), timeout_s=10, what="A's log line")
    # and A receives nothing more, but stays up until its VM goes (so Batch requeues its task)
    time.sleep(1.0)
    assert queue.depth().in_flight == 0 and a.proc.poll() is None

    # When consumer B (on a VM that stays) takes over, also with --max-attempts 1
    b = Consumer(settings, tmp_path, "vm-b", events_url=None)
    consumers.append(b)
    runs = RunStore(open_result_store(settings))
    wait_for(lambda: runs.run_state("spot-1").complete, timeout_s=120, interval_s=0.5, what="the run to finish")

    # Then nothing was poisoned or lost: every image has exactly one row, every batch is done by
    # a first (counted) attempt, and the released ones were finished by B
    assert queue.depth().poison == 0 and runs.read_poison("spot-1") == []
    check = check_every_image_once(settings, "spot-1", names, tmp_path / "rows.jsonl")
    assert (check.rows, check.duplicate_rows) == (24, 0)
    records = runs.read_batch_records("spot-1")
    assert len(records) == 6 and {r.attempt for r in records} == {1}
    assert any(r.worker == "vm-b" for r in records)
    # And the pool's log has the preemption, with what was released
    [event] = [e for e in read_pool_events(settings, settings.queue) if e.kind == "preempt"]
    assert event.node == "vm-a" and event.inputs["released_batches"] >= 3
    assert (event.inputs["event_id"], event.inputs["vm"]) == (event_id, "spot-vm-a")

    # When the VM goes (its agent's SIGTERM), A exits 0
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(timeout=30) == 0, a.text()


def test_a_withdrawn_notice_ends_the_consumer_so_a_fresh_one_takes_over(
    settings: Settings, vm_a: ScheduledEventsServer, consumers: list[Consumer], tmp_path: Path
) -> None:
    queue = open_queue(settings)
    queue.create()
    a = Consumer(settings, tmp_path, "vm-a", events_url=vm_a.url)
    consumers.append(a)
    wait_for(lambda: vm_a.requests, timeout_s=60, what="A to watch the endpoint")
    event_id = vm_a.announce("Terminate")
    wait_for(lambda: "waiting for the VM to be evicted" in a.text(), timeout_s=10, what="A to stand down")
    vm_a.clear()
    assert a.proc.wait(timeout=30) == 1
    assert "withdrawn" in a.text() and event_id in a.text()
