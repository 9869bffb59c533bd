"""Start and stop the pinned Azurite (from node_modules) on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"
ACCOUNT = "devstoreaccount1"
# Azurite's fixed, publicly documented development key (not a secret of anyone's).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class PortTakenError(RuntimeError):
    """Azurite could not listen: another process holds one of its ports."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable_reason() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if not AZURITE_BIN.exists():
        return f"{AZURITE_BIN} is missing: run `npm ci` (make test does)"
    return None


class Azurite:
    """One Azurite process. In memory by default; with `location`, on disk (survives restarts)."""

    def __init__(self, location: Path | None = None) -> None:
        self.location = location
        self._pick_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    def _pick_ports(self) -> None:
        self.blob_port = free_port()
        self.queue_port = free_port()
        self.table_port = free_port()

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT};"
        )

    def start(self, timeout_s: float = 30.0) -> None:
        """Start and wait until it listens. Before its first start only, a port another process
        took since `free_port` picked it (parallel test workers start Azurites at once) is
        replaced by fresh ones; a restart keeps its ports, which its clients already know."""
        for attempt in range(3):
            try:
                self._start(timeout_s)
            except PortTakenError:
                if self._started_once or attempt == 2:
                    raise
                self._pick_ports()
            else:
                self._started_once = True
                return

    def _start(self, timeout_s: float) -> None:
        args = [
            str(AZURITE_BIN),
            "--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port),
            "--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port),
            "--tableHost", "127.0.0.1", "--tablePort", str(self.table_port),
            "--skipApiVersionCheck", "--disableTelemetry", "--silent", "--loose",
        ]  # fmt: skip
        if self.location is None:
            args.append("--inMemoryPersistence")
        else:
            self.location.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(self.location)]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, cwd=ROOT
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                code = self.proc.returncode
                self.stop()
                error = PortTakenError if "EADDRINUSE" in err else RuntimeError
                raise error(f"Azurite exited with {code}: {err[-2000:]}")
            if all(_listening(p) for p in (self.blob_port, self.queue_port)):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Azurite did not listen on {self.blob_port}/{self.queue_port} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
