"""Scoring tasks that keep a consumer busy: to stop it in the middle of loading, or of a call
that never returns.

`SlowLoadTask.load` says "loading the model" on stderr, then sleeps `WORKPOOL_EXAMPLE_LOAD_S`
seconds (default 30) before it scores like `SleepTask`. `HangingTask.predict` never returns.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from consumer.tasks.base import Array, TaskContext
from consumer.tasks.examples import SleepTask

LOAD_ENV = "WORKPOOL_EXAMPLE_LOAD_S"


class SlowLoadTask(SleepTask):
    @classmethod
    def load(cls, context: TaskContext, model: str | None, labels: str | None) -> SlowLoadTask:
        print("loading the model", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get(LOAD_ENV, "30")))
        return cls()


class HangingTask(SleepTask):
    """A scoring call that never returns: `predict` waits for a pool thread that waits forever.

    Libraries that score through a thread pool (a model server's client, an input pipeline) hang
    this way when what they wait for never answers. Python's exit joins every `concurrent.futures`
    pool thread, so a process whose worker thread is stuck here cannot end by returning from main.
    """

    def predict(self, batch: Array) -> Any:
        print("scoring forever", file=sys.stderr, flush=True)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hanging-model")
        return pool.submit(threading.Event().wait).result()


RENDEZVOUS_DIR_ENV = "WORKPOOL_EXAMPLE_RENDEZVOUS_DIR"
RENDEZVOUS_NODES_ENV = "WORKPOOL_EXAMPLE_RENDEZVOUS_NODES"
RENDEZVOUS_TASK = "tests.support.slow_tasks:RendezvousTask"


class RendezvousTask(SleepTask):
    """Scores like `SleepTask`, but a node's first batch waits until `WORKPOOL_EXAMPLE_RENDEZVOUS_NODES`
    nodes (processes) have each started scoring one (at most 120 s), each marking itself in
    `WORKPOOL_EXAMPLE_RENDEZVOUS_DIR`.

    For tests that need every node of a pool to share the work: on a loaded machine a node added
    later may still be importing when the first ones have drained the queue; here nobody finishes
    a batch until everybody has one.
    """

    def predict(self, batch: Array) -> Any:
        folder = os.environ.get(RENDEZVOUS_DIR_ENV)
        if folder:
            mark = os.path.join(folder, str(os.getpid()))
            if not os.path.exists(mark):
                os.makedirs(folder, exist_ok=True)
                open(mark, "w").close()
                needed = int(os.environ.get(RENDEZVOUS_NODES_ENV, "1"))
                deadline = time.monotonic() + 120
                while len(os.listdir(folder)) < needed and time.monotonic() < deadline:
                    time.sleep(0.05)
        return super().predict(batch)
