"""Example custom tasks that need no model: for end-to-end tests, demos and benchmarks.

    producer enqueue ./images --task consumer.tasks.examples:SleepTask

`SleepTask` decodes every image like a real task (so broken images still become error rows),
then "scores" by sleeping a fixed time per image: `WORKPOOL_EXAMPLE_SLEEP_S` seconds (default
`SleepTask.seconds_per_image`, 0.01). Its predictions have the classification shape, one entry
`{"label": "example", "index": 0, "score": 1.0}`, so exports and reports work unchanged.
It keeps orchestration tests fast: no TensorFlow import, no model file.

`FailingTask` fails every batch in `predict` (a batch-level failure): for testing release with
backoff and dead-lettering.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from consumer.tasks.base import Array, Pixels, ScoringTask, TaskContext

SLEEP_ENV = "WORKPOOL_EXAMPLE_SLEEP_S"


class SleepTask(ScoringTask):
    seconds_per_image = 0.01
    input_size = (32, 32)

    @classmethod
    def load(cls, context: TaskContext, model: str | None, labels: str | None) -> SleepTask:
        return cls()

    def __init__(self) -> None:
        self.seconds = float(os.environ.get(SLEEP_ENV, self.seconds_per_image))

    def preprocess(self, pixels: Pixels) -> Array:
        return pixels.astype(np.float32)

    def predict(self, batch: Array) -> Any:
        time.sleep(self.seconds * len(batch))
        return batch.mean(axis=(1, 2))

    def postprocess(self, outputs: Any, count: int) -> list[Any]:
        return [[{"label": "example", "index": 0, "score": 1.0}] for _ in range(count)]


class FailingTask(SleepTask):
    def predict(self, batch: Array) -> Any:
        raise RuntimeError("FailingTask always fails (example of a batch-level failure)")
