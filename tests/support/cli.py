"""Run the real command-line tools in child processes on a test's backend."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import backend_env
from workpool.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


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
    module: str,
    settings: Settings,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 180,
) -> Outcome:
    """`python -m <module> ARGS` on the settings' backend (extra variables from `env`)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env_for(settings, **(env or {})),
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)
