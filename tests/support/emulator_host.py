"""What the cluster emulators (Azure Batch, Azure ML) share around their state: an HTTP front on a
free loopback port, a clock thread that ticks the state under its lock, the node image's
environment, and a stop that kills and reaps every process a node started.
"""

from __future__ import annotations

import subprocess
import threading
import time
import traceback
from collections.abc import Iterable
from contextlib import suppress
from typing import Any, Protocol

from tests.support.batch_emulator.node import group_alive
from tests.support.batch_emulator.server import HttpFront


class HostedState(Protocol):
    lock: Any  # a threading lock
    base_env: dict[str, str]

    @property
    def timing(self) -> Any: ...  # has tick_s

    def tick(self) -> None: ...

    def kill_everything(self) -> list[subprocess.Popen[bytes]]: ...


class HostedService(Protocol):
    errors: list[str]
    log: list[Any]


class EmulatorHost:
    """Subclasses call `_open_front()` (for `self.url`), build their state and service, then `_serve(...)`."""

    state: HostedState
    service: HostedService

    def _open_front(self) -> None:
        self._front = HttpFront()
        self.url = self._front.url

    def _serve(self, state: HostedState, service: HostedService, clock_name: str) -> None:
        self.state, self.service = state, service
        self._front.service = service  # type: ignore[assignment]
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_forever, name=clock_name, daemon=True)

    def start(self) -> Any:
        self._front.start()
        self._ticker.start()
        return self

    def stop(self) -> None:
        """Stop serving, SIGKILL every process a node started, and reap them."""
        self._stop.set()
        self._ticker.join(timeout=5)
        self._front.stop()
        with self.state.lock:
            procs = self.state.kill_everything()
        for proc in procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        # SIGKILL reaches the rest of each group asynchronously: wait (briefly) until it has.
        groups = list(self._groups(procs))
        deadline = time.monotonic() + 10
        while any(group_alive(g) for g in groups) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _groups(self, killed: list[subprocess.Popen[bytes]]) -> Iterable[int]:
        """The process groups to see gone after a stop (each process leads its own)."""
        return [p.pid for p in killed]

    def _tick_forever(self) -> None:
        while not self._stop.wait(self.state.timing.tick_s):
            with self.state.lock:
                try:
                    self.state.tick()
                except Exception:  # keep time moving; the test fails on it at the end
                    self.service.errors.append(f"clock: {traceback.format_exc()}")

    @property
    def errors(self) -> list[str]:
        """Exceptions inside the emulator (its clock or a request handler): a test must see none."""
        return list(self.service.errors)

    @property
    def requests(self) -> list[Any]:
        return list(self.service.log)

    def set_node_env(self, **values: str) -> None:
        """Add variables to every node process started from now on: the VM image's environment.

        For pacing in tests only (e.g. WORKPOOL_EXAMPLE_SLEEP_S for the example SleepTask); what
        the launcher sends is never changed.
        """
        with self.state.lock:
            self.state.base_env.update(values)
