"""Helpers for the orchestration tests: run the real CLIs in child processes, read the pool state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestration.local_state import PoolRecord, pid_alive, read_pool, state_dir
from tests.support.cli import Outcome, run_cli
from workpool.settings import Settings

SLEEP_TASK = "consumer.tasks.examples:SleepTask"
FAILING_TASK = "consumer.tasks.examples:FailingTask"


def orchestration(settings: Settings, *args: str, env: dict[str, str] | None = None, timeout_s: float = 180) -> Outcome:
    return run_cli("orchestration", settings, *args, env=env, timeout_s=timeout_s)


def enqueue(settings: Settings, source: Path, run_id: str, *args: str) -> dict[str, Any]:
    out = run_cli("producer", settings, "enqueue", str(source), "--run", run_id, "--json", *args)
    assert out.code == 0, out.stderr
    result: dict[str, Any] = out.json()
    return result


def pool(settings: Settings) -> PoolRecord | None:
    return read_pool(state_dir(settings))


def live_node_pids(settings: Settings) -> list[int]:
    record = pool(settings)
    return [n.pid for n in record.nodes if n.pid and pid_alive(n.pid)] if record else []


@contextmanager
def torn_down(settings: Settings, env: dict[str, str] | None = None) -> Iterator[None]:
    """Whatever the test does, leave no pool running behind it."""
    try:
        yield
    finally:
        orchestration(settings, "teardown", env=env)
