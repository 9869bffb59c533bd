"""`consumer run` as users and launchers run it: a real process, stopped by signals or killed.

The model-free example task keeps these fast (no TensorFlow import in the children); the
stories are about the process: its exit code, its last line, and what happens to the batch
it holds when it is told to stop or is killed outright.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.supervisor import visible_gpus, worker_count
from tests.conftest import backend_env
from tests.support.azurite import ACCOUNT_KEY
from tests.support.images import stage_folder, write_sample_images
from tests.support.waiting import wait_for
from workpool.messages import BatchMessage
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

pytestmark = pytest.mark.slow
LAST_LINE = re.compile(r"^Worker (\S+) Processed (\d+) images, took \d+:\d{2}:\d{2}\.\d{6}$")
SLEEP_TASK = "consumer.tasks.examples:SleepTask"


class ConsumerProcess:
    """`python -m consumer run ...` with its output in files (pipes could fill and block it)."""

    def __init__(self, settings: Settings, folder: Path, *args: str, sleep_s: float = 0.01) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = folder / "stdout.txt", folder / "stderr.txt"
        env = backend_env(settings) | {"WORKPOOL_EXAMPLE_SLEEP_S": str(sleep_s)}
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "consumer", "run", "--log-level", "DEBUG", *args],
                env=env,
                stdout=out,
                stderr=err,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def scoring(self) -> bool:
        return " scoring " in self.stderr

    def wait(self, timeout_s: float = 60) -> int:
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def processes() -> Iterator[list[ConsumerProcess]]:
    started: list[ConsumerProcess] = []
    yield started
    for process in started:
        process.kill()


@pytest.fixture
def one_batch(settings: Settings, tmp_path: Path) -> BatchMessage:
    names = write_sample_images(tmp_path / "images", 2, (64, 48))
    source = stage_folder(settings, tmp_path / "images")
    message = BatchMessage(run_id="r1", batch_id="b1", task=SLEEP_TASK, source=source, images=names)
    queue = open_queue(settings)
    queue.create()
    queue.send([message.encode()])
    return message


def test_sigterm_releases_the_batch_at_once_and_exits_0(
    settings: Settings, one_batch: BatchMessage, processes: list[ConsumerProcess], tmp_path: Path
) -> None:
    # Given a consumer scoring a slow batch under a 60 s lease
    consumer = ConsumerProcess(settings, tmp_path / "a", "--visibility-timeout-s", "60", sleep_s=30)
    processes.append(consumer)
    wait_for(consumer.scoring, timeout_s=30, what="the consumer to start scoring")

    # When it is sent SIGTERM
    consumer.proc.send_signal(signal.SIGTERM)

    # Then it exits 0 promptly, its last line is the summary, and the batch is visible again
    # at once (long before its 60 s lease would have run out)
    assert consumer.wait(timeout_s=15) == 0
    last = consumer.stdout.strip().splitlines()[-1]
    assert LAST_LINE.match(last), last
    [message] = open_queue(settings).receive(1, visibility_timeout_s=30)
    assert message.dequeue_count == 2
    assert not RunStore(open_result_store(settings)).result_batch_ids("r1")
    # And no secret reached its output
    assert ACCOUNT_KEY not in consumer.stdout + consumer.stderr


def test_a_killed_consumers_batch_comes_back_and_another_consumer_finishes_it(
    settings: Settings, one_batch: BatchMessage, processes: list[ConsumerProcess], tmp_path: Path
) -> None:
    # Given a consumer in the middle of a slow batch under a 2 s lease
    first = ConsumerProcess(settings, tmp_path / "a", "--visibility-timeout-s", "2", "--worker-id", "A", sleep_s=30)
    processes.append(first)
    wait_for(first.scoring, timeout_s=30, what="the first consumer to start scoring")

    # When it is killed outright, and a second consumer is started
    first.kill()
    second = ConsumerProcess(settings, tmp_path / "b", "--worker-id", "B", "--idle-exit-s", "3")
    processes.append(second)

    # Then the batch comes back once the lease runs out; the second consumer scores it and
    # exits after the queue has been empty for 3 s
    assert second.wait(timeout_s=60) == 0
    assert LAST_LINE.match(second.stdout.strip().splitlines()[-1]).groups() == ("B", "2")  # type: ignore[union-attr]
    store = RunStore(open_result_store(settings))
    rows = store.read_results("r1", "b1")
    assert [r.image for r in rows] == one_batch.images and {r.worker for r in rows} == {"B"}
    [record] = store.read_batch_records("r1")
    assert (record.worker, record.attempt) == ("B", 2)
    assert open_queue(settings).depth().messages == 0


def test_workers_n_runs_n_processes_and_sums_their_work(
    settings: Settings, tmp_path: Path, processes: list[ConsumerProcess]
) -> None:
    # Given six small batches
    names = write_sample_images(tmp_path / "images", 6, (32, 32))
    source = stage_folder(settings, tmp_path / "images")
    queue = open_queue(settings)
    queue.create()
    queue.send([BatchMessage(run_id="r1", batch_id=f"b{i}", task=SLEEP_TASK, source=source, images=[n]).encode()
                for i, n in enumerate(names)])  # fmt: skip

    # When `--workers 2` drains them
    pool = ConsumerProcess(settings, tmp_path / "pool", "--workers", "2", "--worker-id", "node", "--idle-exit-s", "2",
                           sleep_s=0.3)  # fmt: skip
    processes.append(pool)
    assert pool.wait(timeout_s=60) == 0

    # Then two worker processes shared them, and the parent's last line sums their images
    store = RunStore(open_result_store(settings))
    workers = {row.worker for i in range(6) for row in store.read_results("r1", f"b{i}")}
    assert workers <= {"node-0", "node-1"} and workers
    lines = pool.stdout.strip().splitlines()
    assert LAST_LINE.match(lines[-1]).groups() == ("node", "6")  # type: ignore[union-attr]
    assert sorted(LAST_LINE.match(line).group(1) for line in lines[:-1]) == ["node-0", "node-1"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--workers", "many"], "--workers"),
        (["--visibility-timeout-s", "0"], "WORKPOOL_VISIBILITY_TIMEOUT_S"),
        (["--config", "/nonexistent/settings.toml"], "does not exist"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(args: list[str], complaint: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKPOOL_")}
    env |= {"WORKPOOL_HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "consumer", "run", *args], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert complaint in done.stderr


def test_gpus_are_counted_without_touching_cuda() -> None:
    # CUDA_VISIBLE_DEVICES, when set, is the user's choice and is respected
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,2"}) == ["0", "2"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    # auto: one worker per GPU, one on a machine without any
    assert worker_count("auto", ["0", "1", "2"]) == 3
    assert worker_count("auto", []) == 1
    assert worker_count("3", []) == 3


def test_sigterm_to_a_worker_pool_stops_every_worker_and_releases_their_batches(
    settings: Settings, one_batch: BatchMessage, processes: list[ConsumerProcess], tmp_path: Path
) -> None:
    # Given two worker processes under one parent, one of them scoring a slow batch
    pool = ConsumerProcess(settings, tmp_path / "pool", "--workers", "2", "--worker-id", "node",
                           "--visibility-timeout-s", "60", sleep_s=30)  # fmt: skip
    processes.append(pool)
    wait_for(pool.scoring, timeout_s=30, what="a worker to start scoring")

    # When the parent is sent SIGTERM
    pool.proc.send_signal(signal.SIGTERM)

    # Then both workers stop, the parent exits 0 with the total as its last line, and the batch
    # is visible again at once
    assert pool.wait(timeout_s=20) == 0
    lines = pool.stdout.strip().splitlines()
    assert LAST_LINE.match(lines[-1]).groups() == ("node", "0")  # type: ignore[union-attr]
    assert len([line for line in lines if LAST_LINE.match(line)]) == 3
    [message] = open_queue(settings).receive(1, visibility_timeout_s=30)
    assert message.dequeue_count == 2
