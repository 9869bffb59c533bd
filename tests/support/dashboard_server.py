"""`orchestration dashboard` in a child process on a free port, for the dashboard tests."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

from tests.support.cli import ROOT, env_for
from tests.support.waiting import wait_for
from workpool.settings import Settings

URL = re.compile(r" on (http://\S+/) ")


class DashboardProcess:
    """Starts the dashboard (`--port 0`), learns its address from its first line, stops it on exit."""

    def __init__(self, settings: Settings, tmp_path: Path, env: dict[str, str] | None = None, *args: str) -> None:
        self.args = [sys.executable, "-m", "orchestration", "dashboard", "--port", "0", "--interval-s", "0.5", *args]
        self.env = env_for(settings, **(env or {}))
        self.lines: list[str] = []
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None
        self.reader: threading.Thread | None = None

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def start(self) -> DashboardProcess:
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

        def address() -> str | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the dashboard exited ({self.proc.returncode}): {''.join(self.lines)}")
            found = [m[1] for line in self.lines if (m := URL.search(line))]
            return found[0] if found else None

        self.url = wait_for(address, timeout_s=60, what="the dashboard's address")
        return self

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    def __enter__(self) -> DashboardProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
