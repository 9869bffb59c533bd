"""A scoring task that prints the storage connection string to stdout on every batch: what a
careless library might do. Its node's log then really holds the secret, and `orchestration
logs` must not show it."""

from __future__ import annotations

import os
from typing import Any

from consumer.tasks.examples import SleepTask
from workpool.settings import env_name


class LeakyTask(SleepTask):
    def predict(self, batch: Any) -> Any:
        print(f"leaky library: connecting with {os.environ.get(env_name('connection_string'), '')}", flush=True)
        return super().predict(batch)
