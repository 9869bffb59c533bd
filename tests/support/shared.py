"""Build something once per test session, however many pytest-xdist workers ask for it.

Each xdist worker is a session of its own, so a session-scoped fixture would build its thing
once per worker. `build_once` keeps the result in a folder every worker of the run shares (the
parent of the workers' own base temp folders; the base temp itself without xdist) and lets one
worker build it under an exclusive file lock while the others wait, then read what it built.
"""

from __future__ import annotations

import fcntl
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")


def shared_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder `name` that every worker of this run sees (created on first use)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # xdist gives worker gwN the base temp <run's base temp>/popen-gwN
    folder = base / f"shared-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """`build(folder)`'s result, built by the first worker to ask; the others get a copy of it
    (pickled beside what it built in the shared folder). A build that raised is tried again."""
    folder = shared_folder(tmp_path_factory, name)
    done = folder / ".result.pickle"
    with exclusive(folder / ".lock"):
        if done.is_file():
            result: T = pickle.loads(done.read_bytes())
            return result
        result = build(folder)
        staged = done.with_suffix(".tmp")
        staged.write_bytes(pickle.dumps(result))
        staged.replace(done)
        return result
