"""Helpers for the orchestration tests: run the real CLIs in child processes, read the pool state."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration.local_state import PoolRecord, pid_alive, read_pool, state_dir
from tests.conftest import backend_env
from workpool.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SLEEP_TASK = "consumer.tasks.examples:SleepTask"
FAILING_TASK = "consumer.tasks.examples:FailingTask"


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    env = backend_env(settings)
    env.update(extra)
    return env


def run_cli(
    module: str, settings: Settings, *args: str, env: dict[str, str] | None = None, timeout_s: float = 180
) -> Outcome:
    """`python -m <module> ARGS` on the settings' backend (extra variables from `env`)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env_for(settings, **(env or {})),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


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
