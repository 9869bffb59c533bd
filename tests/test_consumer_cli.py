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

from consumer.gpu_fanout import visible_gpus, worker_count
from orchestration.local_state import pid_alive
from tests.conftest import backend_env
from tests.support.azurite import ACCOUNT_KEY
from tests.support.images import stage_folder, write_sample_images
from tests.support.messages import record_runs
from tests.support.waiting import wait_for
from workpool.messages import BatchMessage
from workpool.queue import open_queue
from workpool.runs import Manifest, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

pytestmark = pytest.mark.slow
LAST_LINE = re.compile(r"^Worker (\S+) Processed (\d+) images, took \d+:\d{2}:\d{2}\.\d{6}$")
SLEEP_TASK = "consumer.tasks.examples:SleepTask"
SLOW_LOAD_TASK = "tests.support.slow_tasks:SlowLoadTask"
REPO = Path(__file__).resolve().parents[1]


class ConsumerProcess:
    """`python -m consumer run ...` with its output in files (pipes could fill and block it)."""

    def __init__(self, settings: Settings, folder: Path, *args: str, sleep_s: float = 0.01) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = folder / "stdout.txt", folder / "stderr.txt"
        env = backend_env(settings) | {"WORKPOOL_EXAMPLE_SLEEP_S": str(sleep_s), "PYTHONPATH": str(REPO)}
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
    record_runs(settings, message)
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
    messages = [BatchMessage(run_id="r1", batch_id=f"b{i}", task=SLEEP_TASK, source=source, images=[n])
                for i, n in enumerate(names)]  # fmt: skip
    record_runs(settings, *messages)
    queue.send([m.encode() for m in messages])

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


# --- stopped at any moment of start-up --------------------------------------------------------
def catches(pid: int, signum: int) -> bool:
    """Whether the process has its own handler for `signum` (Linux: SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(status.split("SigCgt:")[1].split()[0], 16)
    return bool(caught & (1 << (signum - 1)))


def worker_pids(pool: ConsumerProcess) -> dict[str, int]:
    """The pool's worker processes by worker id (not its other children, such as nvidia-smi)."""
    pid = pool.proc.pid
    workers = {}
    try:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            args = Path(f"/proc/{child}/cmdline").read_text().split("\0")
            if "--totals-file" in args:  # not a fork of the parent that has yet to exec
                workers[args[args.index("--worker-id") + 1]] = int(child)
    except (FileNotFoundError, ProcessLookupError):
        pass
    return workers


def workers_catch(pool: ConsumerProcess) -> bool:
    workers = worker_pids(pool).values()
    return len(workers) == 2 and all(catches(p, signal.SIGTERM) for p in workers)


# Each moment: what to queue, and when the pool counts as being there.
MOMENTS = {
    # the parent itself, in its first moments: its handlers are in, its imports are not done
    "parent importing": lambda pool: catches(pool.proc.pid, signal.SIGTERM),
    # both worker processes exist, but their interpreters may not have run a line of ours yet
    "workers just spawned": lambda pool: len(worker_pids(pool)) == 2,
    # both workers have their handlers, and are importing
    "workers importing": workers_catch,
    # a worker holds a batch and is loading its model (30 s)
    "worker loading the model": lambda pool: "loading the model" in pool.stderr,
    # both workers are warming up a pending run's model (30 s) before their first lease
    "workers warming up": lambda pool: pool.stderr.count("loading the model") == 2,
    # both workers are polling an empty queue
    "workers idle": lambda pool: pool.stderr.count("consuming queue") == 2,
}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc")
@pytest.mark.parametrize(
    ("moment", "signum"),
    [
        ("parent importing", signal.SIGTERM),
        ("workers just spawned", signal.SIGTERM),
        ("workers importing", signal.SIGINT),
        ("worker loading the model", signal.SIGTERM),
        ("workers warming up", signal.SIGTERM),
        ("workers idle", signal.SIGINT),
    ],
)
def test_a_worker_pool_told_to_stop_during_start_up_stops_cleanly(
    moment: str,
    signum: signal.Signals,
    settings: Settings,
    tmp_path: Path,
    processes: list[ConsumerProcess],
) -> None:
    # Given (for the model-load moment) one batch whose task takes 30 s to load
    queue = open_queue(settings)
    queue.create()
    if moment == "worker loading the model":
        names = write_sample_images(tmp_path / "images", 1, (32, 32))
        source = stage_folder(settings, tmp_path / "images")
        slow = BatchMessage(run_id="r1", batch_id="b1", task=SLOW_LOAD_TASK, source=source, images=names)
        record_runs(settings, slow)
        queue.send([slow.encode()])
    if moment == "workers warming up":
        # a pending run whose model every consumer warms before it takes a batch
        store = RunStore(open_result_store(settings))
        store.store.ensure()
        manifest = Manifest(run_id="r1", source="unused", task=SLOW_LOAD_TASK, model="slow-model", batch_size=1,
                            queue=settings.queue, images=1, batches={"b1": ["a.jpg"]})  # fmt: skip
        store.create_manifest(manifest)

    # and a pool of two workers starting up
    pool = ConsumerProcess(settings, tmp_path / "pool", "--workers", "2", "--worker-id", "node",
                           "--visibility-timeout-s", "60")  # fmt: skip
    processes.append(pool)

    # When the parent is signalled at that moment
    wait_for(lambda: MOMENTS[moment](pool), timeout_s=60, interval_s=0.005, what=moment)
    pool.proc.send_signal(signum)

    # Then it exits 0 (not 143 or 130, not 1), its last line the total, with a line per worker
    # that was started
    assert pool.wait(timeout_s=30) == 0, pool.stderr[-3000:]
    lines = [line for line in pool.stdout.strip().splitlines() if LAST_LINE.match(line)]
    assert LAST_LINE.match(lines[-1]).groups() == ("node", "0"), pool.stdout  # type: ignore[union-attr]
    workers = sorted(LAST_LINE.match(line).group(1) for line in lines[:-1])  # type: ignore[union-attr]
    if moment == "parent importing":
        assert workers in ([], ["node-0", "node-1"])
    else:
        assert workers == ["node-0", "node-1"]
    assert "Traceback" not in pool.stderr
    # and a batch held while loading the model is visible again at once
    if moment == "worker loading the model":
        [message] = queue.receive(1, visibility_timeout_s=30)
        assert message.dequeue_count == 2


def test_a_killed_worker_is_respawned_and_the_pool_finishes_the_run(
    settings: Settings, tmp_path: Path, processes: list[ConsumerProcess]
) -> None:
    # Given four one-image batches of 1 s each and a pool of two workers under a 2 s lease
    names = write_sample_images(tmp_path / "images", 4, (32, 32))
    source = stage_folder(settings, tmp_path / "images")
    queue = open_queue(settings)
    queue.create()
    messages = [BatchMessage(run_id="r1", batch_id=f"b{i}", task=SLEEP_TASK, source=source, images=[n])
                for i, n in enumerate(names)]  # fmt: skip
    record_runs(settings, *messages)
    queue.send([m.encode() for m in messages])
    pool = ConsumerProcess(settings, tmp_path / "pool", "--workers", "2", "--worker-id", "node", "--idle-exit-s", "3",
                           "--visibility-timeout-s", "2", sleep_s=1.0)  # fmt: skip
    processes.append(pool)

    # When worker node-1 is killed outright in the middle of its first batch
    scoring = re.compile(r"worker=node-1 attempt=\d+ scoring ")
    wait_for(lambda: scoring.search(pool.stderr), timeout_s=60, interval_s=0.02, what="node-1 to start scoring")
    os.kill(worker_pids(pool)["node-1"], signal.SIGKILL)

    # Then the parent respawns it, the pool scores every batch (the killed one once its lease
    # runs out), and the parent exits 0 with every image counted once
    assert pool.wait(timeout_s=120) == 0, pool.stderr[-3000:]
    assert "worker node-1 died (killed by SIGKILL)" in pool.stderr
    store = RunStore(open_result_store(settings))
    assert store.result_batch_ids("r1") == {"b0", "b1", "b2", "b3"}
    lines = pool.stdout.strip().splitlines()
    assert LAST_LINE.match(lines[-1]).groups() == ("node", "4")  # type: ignore[union-attr]
    # and the respawned node-1 ended with its own summary line, as node-0 did
    assert sorted(LAST_LINE.match(line).group(1) for line in lines[:-1]) == ["node-0", "node-1"]  # type: ignore[union-attr]


def test_workers_whose_parent_is_killed_outright_stop_and_release_their_batch(
    settings: Settings, one_batch: BatchMessage, processes: list[ConsumerProcess], tmp_path: Path
) -> None:
    # Given a pool of two workers, one of them scoring a slow batch under a 60 s lease
    pool = ConsumerProcess(settings, tmp_path / "pool", "--workers", "2", "--worker-id", "node",
                           "--visibility-timeout-s", "60", sleep_s=30)  # fmt: skip
    processes.append(pool)
    wait_for(pool.scoring, timeout_s=60, what="a worker to start scoring")
    workers = list(worker_pids(pool).values())

    # When the parent is killed outright (SIGKILL: it cannot pass anything on)
    pool.kill()

    # Then its workers notice, stop, and the batch is visible again at once
    wait_for(lambda: not any(pid_alive(p) for p in workers), timeout_s=30, what="the orphaned workers to stop")
    [message] = open_queue(settings).receive(1, visibility_timeout_s=30)
    assert message.dequeue_count == 2
