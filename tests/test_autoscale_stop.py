"""How a consumer of an autoscaled pool stops: with `WORKPOOL_STOP_FINISH_S`, SIGTERM (a
scale-in) lets the batch being scored finish and be acked, within the window; past it, the
batch is released as a plain SIGTERM does. Real `consumer run` processes on both backends."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import stage_folder, write_sample_images
from tests.support.messages import record_runs
from tests.support.waiting import wait_for
from tests.test_consumer_cli import SLEEP_TASK, ConsumerProcess
from workpool.messages import BatchMessage
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

pytestmark = pytest.mark.slow


@pytest.fixture
def two_batches(settings: Settings, tmp_path: Path) -> list[BatchMessage]:
    names = write_sample_images(tmp_path / "images", 4, (64, 48))
    source = stage_folder(settings, tmp_path / "images")
    messages = [
        BatchMessage(run_id="r1", batch_id=f"b{i}", task=SLEEP_TASK, source=source, images=names[2 * i : 2 * i + 2])
        for i in range(2)
    ]
    record_runs(settings, *messages)
    queue = open_queue(settings)
    queue.create()
    queue.send([m.encode() for m in messages])
    return messages


@pytest.fixture
def started() -> Iterator[list[ConsumerProcess]]:
    processes: list[ConsumerProcess] = []
    yield processes
    for process in processes:
        process.kill()


def consumer(settings: Settings, folder: Path, finish_s: float, sleep_s: float) -> ConsumerProcess:
    settings_with_window = settings.model_copy(update={"stop_finish_s": finish_s})
    return ConsumerProcess(
        settings_with_window, folder, "--visibility-timeout-s", "60", "--worker-id", "A", sleep_s=sleep_s
    )


def test_sigterm_with_a_finish_window_acks_the_batch_in_hand_and_releases_the_prefetched_one(
    settings: Settings, two_batches: list[BatchMessage], started: list[ConsumerProcess], tmp_path: Path
) -> None:
    # Given a consumer scoring a 3-second batch, the other one prefetched, with a 20 s window
    process = consumer(settings, tmp_path / "a", finish_s=20, sleep_s=1.5)
    started.append(process)
    wait_for(process.scoring, timeout_s=60, what="the consumer to start scoring")

    # When it is sent SIGTERM (what a scale-in sends)
    process.proc.send_signal(signal.SIGTERM)

    # Then it finishes and acks the batch in hand, gives the prefetched one back, and exits 0
    assert process.wait(timeout_s=30) == 0, process.stderr
    runs = RunStore(open_result_store(settings))
    done = runs.record_batch_ids("r1")
    assert len(done) == 1, process.stderr
    assert "finishing the batch in hand" in process.stderr
    queue = open_queue(settings)
    left = wait_for(lambda: queue.receive(2, visibility_timeout_s=30), timeout_s=10, what="the released batch")
    assert [BatchMessage.decode(m.body).batch_id for m in left] == sorted({"b0", "b1"} - done)
    # (received at most once before, as the stopped consumer's prefetched batch: it was never scored)
    assert left[0].dequeue_count <= 2


def test_a_batch_that_outlasts_the_window_is_released_not_waited_for(
    settings: Settings, two_batches: list[BatchMessage], started: list[ConsumerProcess], tmp_path: Path
) -> None:
    # Given a consumer scoring a 60-second batch with a 1 s window
    process = consumer(settings, tmp_path / "a", finish_s=1, sleep_s=30)
    started.append(process)
    wait_for(process.scoring, timeout_s=60, what="the consumer to start scoring")

    # When it is sent SIGTERM
    process.proc.send_signal(signal.SIGTERM)

    # Then it exits 0 after the window, with both batches back on the queue and nothing written
    assert process.wait(timeout_s=20) == 0, process.stderr
    assert not RunStore(open_result_store(settings)).result_batch_ids("r1")
    queue = open_queue(settings)
    back = wait_for(lambda: len(q := queue.receive(2, visibility_timeout_s=30)) == 2 and q, timeout_s=10,
                    what="both batches back")  # fmt: skip
    assert sorted(BatchMessage.decode(m.body).batch_id for m in back) == ["b0", "b1"]
