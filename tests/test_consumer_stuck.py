"""Why `consumer run` ends with `os._exit(0)` when its worker thread is stuck, and only then.

A scoring call can hang for good (a model server that never answers, a wedged accelerator call):
the consumer cannot interrupt it. On SIGTERM it still gives its batches back at once
(`Consumer.give_back`) and prints its summary; but a process whose thread is stuck cannot end by
returning from main: Python's exit waits for threads it cannot stop (here a `concurrent.futures`
pool thread, which the interpreter joins on exit). So `consumer/cli.py` leaves with `os._exit(0)`
when, and only when, the worker thread was abandoned. The second test runs the same consumer with
that one call disabled, and shows the process never ending.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import backend_env
from tests.support.images import stage_folder, write_sample_images
from tests.support.messages import record_runs
from tests.support.waiting import wait_for
from tests.test_consumer_cli import LAST_LINE, REPO, ConsumerProcess
from workpool.messages import BatchMessage
from workpool.queue import open_queue
from workpool.settings import Settings

pytestmark = pytest.mark.slow
HANGING_TASK = "tests.support.slow_tasks:HangingTask"

# `consumer run` exactly as `python -m consumer` runs it, except that `os._exit` only says it was
# called and returns, so the process must end the ordinary way.
WITHOUT_HARD_EXIT = """
import os, sys
from workpool.processes import signals
signals.install()
def skipped(code):
    print(f"os._exit({code}) skipped", file=sys.stderr, flush=True)
os._exit = skipped
from consumer.cli import app
try:
    app(prog_name="consumer", args=sys.argv[1:])
finally:
    print("main returned", file=sys.stderr, flush=True)
"""


@pytest.fixture
def hanging_batch(settings: Settings, tmp_path: Path) -> BatchMessage:
    names = write_sample_images(tmp_path / "images", 1, (32, 32))
    source = stage_folder(settings, tmp_path / "images")
    message = BatchMessage(run_id="r1", batch_id="b1", task=HANGING_TASK, source=source, images=names)
    record_runs(settings, message)  # consumers take only batches their run's manifest lists
    queue = open_queue(settings)
    queue.create()
    queue.send([message.encode()])
    return message


@pytest.mark.parametrize("backend", ["embedded"])
def test_a_consumer_stuck_in_a_scoring_call_gives_its_batch_back_and_exits_0(
    settings: Settings, hanging_batch: BatchMessage, tmp_path: Path
) -> None:
    # Given a consumer whose scoring call never returns, under a 60 s lease
    consumer = ConsumerProcess(settings, tmp_path / "a", "--visibility-timeout-s", "60")
    try:
        wait_for(lambda: "scoring forever" in consumer.stderr, timeout_s=60, what="the call that never returns")

        # When it is told to stop
        consumer.proc.send_signal(signal.SIGTERM)

        # Then it exits 0 promptly with its summary line, and its batch is visible again at once
        assert consumer.wait(timeout_s=30) == 0, consumer.stderr[-2000:]
        assert LAST_LINE.match(consumer.stdout.strip().splitlines()[-1])
        [message] = open_queue(settings).receive(1, visibility_timeout_s=30)
        assert message.dequeue_count == 2
    finally:
        consumer.kill()


@pytest.mark.parametrize("backend", ["embedded"])
def test_without_the_hard_exit_a_stuck_consumer_would_never_end(
    settings: Settings, hanging_batch: BatchMessage, tmp_path: Path
) -> None:
    # Given the same consumer with `os._exit` disabled
    err = tmp_path / "stderr.txt"
    env = backend_env(settings) | {"PYTHONPATH": str(REPO)}
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", WITHOUT_HARD_EXIT, "run", "--visibility-timeout-s", "60"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for(lambda: "scoring forever" in err.read_text(), timeout_s=60, what="the call that never returns")

        # When it is told to stop: it gives the batch back and reaches the hard exit
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "os._exit(0) skipped" in err.read_text(), timeout_s=30, what="the consumer to stop")
        wait_for(lambda: "main returned" in err.read_text(), timeout_s=30, what="main to return")
        [message] = open_queue(settings).receive(1, visibility_timeout_s=30)
        assert message.dequeue_count == 2

        # Then, main having returned, the process still does not end: its exit waits for the
        # stuck thread. (The first test's consumer, with the hard exit, ended within seconds.)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
