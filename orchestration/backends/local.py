"""The local backend: a node is a supervised `consumer run` process on this machine.

`launch` starts a detached supervisor (`orchestration.supervisor`) that keeps the target number
of nodes running and respawns crashed ones; `scale` rewrites the target it watches, from any
shell; `teardown` SIGTERMs it, and it stops its nodes gracefully (their batches are released)
before exiting. Everything lives under `<home>/local/<queue>/`, so the pool outlives the
command that launched it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from orchestration.launcher import ClusterState, Launcher, LogSource, NodeInfo, PlannedRequest
from orchestration.local_state import (
    SUPERVISOR_MODULE,
    PoolRecord,
    node_command,
    pid_alive,
    read_json,
    read_pool,
    read_target,
    ready_file,
    state_dir,
    write_target,
)
from orchestration.supervisor import slot_id
from workpool.errors import UsageError, WorkpoolError
from workpool.handoff import child_env, secret_env_names
from workpool.settings import Settings

# A local node is a whole `consumer run` process (a Python interpreter, its imports, its own
# decode threads): far more of them than cores only thrashes the machine (or exhausts its
# memory), so a pool beyond this many per core needs --force.
NODES_PER_CORE = 4


def _cores() -> int:
    return os.cpu_count() or 1


class LocalLauncher(Launcher):
    name = "local"

    def __init__(
        self, settings: Settings, *, grace_s: float = 30.0, start_timeout_s: float = 60.0, up_after_s: float = 3.0
    ) -> None:
        self.settings = settings
        self.directory = state_dir(settings)
        self.grace_s = grace_s  # how long a SIGTERMed node may take to release its batch and exit
        self.start_timeout_s = start_timeout_s
        self.up_after_s = up_after_s  # a node alive this long has got past its start-up checks

    # --- the supervisor ----------------------------------------------------------------------
    def supervisor_pid(self) -> int | None:
        """The running supervisor's pid, or None (never started, torn down, or dead)."""
        data = read_json(self.directory / "supervisor.json")
        pid = int(data["pid"]) if data else None
        return pid if pid_alive(pid, SUPERVISOR_MODULE) else None

    def _log_tail(self, name: str = "supervisor.log", lines: int = 15) -> str:
        path = self.directory / "logs" / name
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _wait_for_nodes(self, generation: int, restarts_before: dict[str, int], what: str) -> None:
        """Until the supervisor has acted on target `generation` (or a newer one) and every node
        of the pool's target has marked itself past its start-up checks and stayed up `up_after_s`;
        fail at once if one dies meanwhile.

        Waiting for the pool's current target, not for the size asked here, lets another shell
        scale the pool while this command waits. A node that exits within moments of starting
        (a broken install, a bad model cache folder) would be restarted forever; saying so now,
        with its log, beats a "running" pool that never scores anything.
        """

        def up(pool: PoolRecord) -> bool:
            for n in pool.nodes:
                if n.restarts > restarts_before.get(n.id, 0) or n.state == "restarting":
                    raise WorkpoolError(
                        f"local node {n.id} died while {what} ({n.last_exit or 'exited'}); "
                        f"the end of its log:\n{self._log_tail(n.id + '.log')}"
                    )
            settled = time.time() - self.up_after_s
            running = [n for n in pool.nodes if n.state == "running" and pid_alive(n.pid)]
            return (
                pool.generation >= generation
                and len(running) == pool.target
                and all((n.started_at or 0) <= settled and self._is_ready(n.id) for n in running)
            )

        self._wait_until(up, what, self.start_timeout_s)

    def _is_ready(self, node_id: str) -> bool:
        """The node has passed its start-up checks (its own mark, not a guess from its age: a loaded
        machine can keep a node that is about to fail importing for longer than any fixed time)."""
        return ready_file(self.directory, node_id).exists()

    def _wait_until(self, done: Callable[[PoolRecord], bool], what: str, timeout_s: float) -> PoolRecord:
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            pool = read_pool(self.directory)
            if pool is not None and done(pool):
                return pool
            # The detached supervisor needs a moment to write its pid; after that, its absence
            # means it died (a broken install, an unwritable home) and waiting is pointless.
            if time.monotonic() > started + 5 and self.supervisor_pid() is None:
                raise WorkpoolError(f"the local supervisor exited while {what}; its log:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise WorkpoolError(f"timed out after {timeout_s:.0f} s {what}; supervisor log:\n{self._log_tail()}")
            time.sleep(0.1)

    # --- Launcher ----------------------------------------------------------------------------
    def max_nodes(self) -> int:
        return NODES_PER_CORE * _cores()

    def max_nodes_reason(self) -> str:
        return f"{NODES_PER_CORE} nodes per CPU core, {_cores()} core(s)"

    def _launch(self, nodes: int) -> None:
        if self.supervisor_pid() is not None:
            pool = read_pool(self.directory)
            size = pool.target if pool else "?"
            raise UsageError(
                f"a local pool for queue {self.settings.queue} is already running ({size} nodes): "
                "use `orchestration scale --nodes M`, or `orchestration teardown` first"
            )
        self._kill_orphans()
        logs = self.directory / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (self.directory / "nodes.json").unlink(missing_ok=True)
        generation = write_target(self.directory, nodes)
        with open(logs / "supervisor.log", "ab") as out:
            # The supervisor forks itself away; this child exits at once and is reaped here.
            started = subprocess.run(
                [sys.executable, "-m", SUPERVISOR_MODULE, str(self.directory), str(self.grace_s)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(self.settings),
                start_new_session=True,
                check=False,
            )
        if started.returncode != 0:
            raise WorkpoolError(f"the local supervisor could not start; its log:\n{self._log_tail()}")
        try:
            self._wait_for_nodes(generation, {}, f"waiting for {nodes} local node(s) to start")
        except WorkpoolError:
            self.teardown()  # a pool whose nodes cannot start would only crash-loop
            raise

    def _scale(self, nodes: int) -> None:
        if self.supervisor_pid() is None:
            raise UsageError(f"no local pool is running for queue {self.settings.queue}: use `orchestration launch`")
        before = read_pool(self.directory)
        restarts = {n.id: n.restarts for n in before.nodes} if before else {}
        generation = write_target(self.directory, nodes)
        # Returns once added nodes are up and extras have been asked to stop (they finish
        # releasing their batch on their own).
        self._wait_for_nodes(generation, restarts, f"scaling to {nodes} local node(s)")

    def state(self) -> ClusterState:
        pid = self.supervisor_pid()
        pool = read_pool(self.directory)
        wanted = read_target(self.directory)
        target = wanted.nodes if wanted else 0
        if pid is None:
            detail = "not running" if pool is None or not pool.nodes else "supervisor is not running (run teardown)"
            orphans = [n for n in pool.nodes if pid_alive(n.pid, "consumer")] if pool else []
            nodes = [NodeInfo(n.id, "unsupervised", f"pid {n.pid}") for n in orphans]
            return ClusterState(backend=self.name, target_nodes=0 if not nodes else target, nodes=nodes, detail=detail)
        infos = []
        for n in pool.nodes if pool else []:
            parts = [f"pid {n.pid}"] if n.pid else []
            if n.restarts:
                parts.append(f"{n.restarts} restart(s)")
            if n.last_exit:
                parts.append(f"last exit: {n.last_exit}")
            infos.append(NodeInfo(n.id, n.state, ", ".join(parts)))
        return ClusterState(
            backend=self.name,
            target_nodes=target,
            nodes=infos,
            detail=f"supervisor pid {pid}, logs in {self.log_dir}",
        )

    def _teardown(self, delete: bool) -> None:
        pid = self.supervisor_pid()
        if pid is not None:
            _signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s + 10
            while pid_alive(pid, SUPERVISOR_MODULE) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_alive(pid, SUPERVISOR_MODULE):
                _signal(pid, signal.SIGKILL)
        self._kill_orphans()
        (self.directory / "target.json").unlink(missing_ok=True)
        (self.directory / "supervisor.json").unlink(missing_ok=True)
        if delete and self.directory.exists():
            shutil.rmtree(self.directory)

    def _describe(self, nodes: int) -> list[PlannedRequest]:
        env = child_env(self.settings, base={})
        secrets = secret_env_names()
        shown = {
            k: ("***" if k in secrets else v)
            for k, v in sorted(env.items())
            if k.startswith("WORKPOOL_") or k in secrets
        }
        requests = [
            PlannedRequest(
                method="spawn",
                path=f"{sys.executable} -m {SUPERVISOR_MODULE} {self.directory}",
                body={"target_nodes": nodes, "environment": shown},
                note="detached supervisor; keeps the nodes running and respawns crashed ones",
            )
        ]
        for slot in range(1, nodes + 1):
            node_id = slot_id(slot)
            requests.append(
                PlannedRequest(
                    method="spawn",
                    path=" ".join(node_command(sys.executable, node_id, self.settings.node_workers)),
                    note=f"node {node_id}; log in {self.directory / 'logs' / (node_id + '.log')}",
                )
            )
        return requests

    def log_sources(self) -> list[LogSource]:
        """Each node's log (its consumer's stdout and stderr, written by the supervisor), in slot
        order; nodes stopped since still have theirs until `teardown --delete`."""
        files = [p for p in self.log_dir.glob("*.log") if p.name != "supervisor.log"]
        files.sort(key=lambda p: (len(p.stem), p.stem))  # node-2 before node-10
        return [LogSource(p.stem, "log", partial(_file_size, p), partial(_read_from, p)) for p in files]

    # --- helpers -----------------------------------------------------------------------------
    def _kill_orphans(self) -> None:
        """Nodes left running by a supervisor that was killed itself (SIGKILL, OOM): stop them."""
        pool = read_pool(self.directory)
        if pool is None:
            return
        pids = [n.pid for n in pool.nodes if n.pid and pid_alive(n.pid, "consumer")]
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while any(pid_alive(p, "consumer") for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            if pid_alive(pid, "consumer"):
                _signal(pid, signal.SIGKILL)

    @property
    def log_dir(self) -> Path:
        return self.directory / "logs"


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


def _signal(pid: int, signum: int) -> None:
    """Send a signal to a process that may have exited a moment ago."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
