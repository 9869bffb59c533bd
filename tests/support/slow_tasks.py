"""A scoring task whose model takes long to load: to stop a consumer in the middle of loading.

`SlowLoadTask.load` says "loading the model" on stderr, then sleeps `WORKPOOL_EXAMPLE_LOAD_S`
seconds (default 30) before it scores like `SleepTask`.
"""

from __future__ import annotations

import os
import sys
import time

from consumer.tasks.base import TaskContext
from consumer.tasks.examples import SleepTask

LOAD_ENV = "WORKPOOL_EXAMPLE_LOAD_S"


class SlowLoadTask(SleepTask):
    @classmethod
    def load(cls, context: TaskContext, model: str | None, labels: str | None) -> SlowLoadTask:
        print("loading the model", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get(LOAD_ENV, "30")))
        return cls()
