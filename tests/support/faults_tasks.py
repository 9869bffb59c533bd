"""Scoring tasks for the fault-injection suite, loaded by real consumer processes by name.

    producer enqueue ... --task tests.support.faults_tasks:LedgerTask

Both behave like the model-free `SleepTask` (decode every image, sleep `WORKPOOL_EXAMPLE_SLEEP_S`
per image) and add what a fault scenario needs to see from outside the process:

- `LedgerTask` appends one line per `predict` call to the file named by `WORKPOOL_FAULTS_LEDGER`
  (pid, images in the call, a fingerprint of the batch's pixels), so a test can count how often
  each batch was really scored, across every process, SIGKILLed ones included.
- `TrippingTask` is a `LedgerTask` with a data-dependent bug: a batch holding a pure red image
  fails in `predict`, every time, until the file named by `WORKPOOL_FAULTS_FIXED` exists (the
  "fix is deployed"). Every other batch scores normally.

Each ledger line is one `write` of a short line to a file opened with O_APPEND, so lines of
concurrent processes never interleave.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from consumer.tasks.base import Array
from consumer.tasks.examples import SleepTask

LEDGER_ENV = "WORKPOOL_FAULTS_LEDGER"
FIXED_ENV = "WORKPOOL_FAULTS_FIXED"
LEDGER_TASK = "tests.support.faults_tasks:LedgerTask"
TRIPPING_TASK = "tests.support.faults_tasks:TrippingTask"
TRIP_COLOUR = (255, 0, 0)


def fingerprint(batch: Array) -> str:
    """Identifies a batch by its pixels (the same images always give the same fingerprint)."""
    return hashlib.sha256(np.ascontiguousarray(batch, dtype=np.float32).tobytes()).hexdigest()[:16]


class LedgerTask(SleepTask):
    def predict(self, batch: Array) -> Any:
        outputs = super().predict(batch)
        ledger = os.environ.get(LEDGER_ENV)
        if ledger:
            line = f"{os.getpid()} {len(batch)} {fingerprint(batch)}\n".encode()
            fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return outputs


class TrippingTask(LedgerTask):
    def predict(self, batch: Array) -> Any:
        fixed = os.environ.get(FIXED_ENV)
        means = batch.mean(axis=(1, 2))
        trips = np.any(np.all(np.abs(means - np.array(TRIP_COLOUR, dtype=np.float32)) < 0.5, axis=1))
        if trips and not (fixed and Path(fixed).exists()):
            raise RuntimeError("TrippingTask: a pure red image trips the scoring bug")
        return super().predict(batch)


def read_ledger(path: Path) -> list[tuple[int, int, str]]:
    """(pid, images, fingerprint) per scoring call recorded so far."""
    if not path.exists():
        return []
    calls = []
    for line in path.read_text().splitlines():
        pid, images, digest = line.split()
        calls.append((int(pid), int(images), digest))
    return calls
