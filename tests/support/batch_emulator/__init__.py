"""An Azure Batch emulator for the tests: the data-plane REST API with real state and real node
processes, so a test can run what `orchestration launch --backend azure-batch` asks a node to run.

    with batch_emulator(tmp_path) as batch:          # or the `batch_emulator` fixture
        settings: WORKPOOL_BATCH_ACCOUNT_URL=batch.url, WORKPOOL_BATCH_ACCOUNT_NAME=batch.account,
                  WORKPOOL_BATCH_ACCOUNT_KEY=batch.key
        ... launch ...
        batch.wait_for_nodes("gpu", state="idle", count=2)
        batch.preempt("gpu", node_id)
        batch.nodes("gpu"), batch.tasks("workpool"), batch.node_file("gpu", node_id, "startup/stderr.txt")

What is real: pool allocation that takes time and refuses a second resize (409
PoolBeingResized), nodes whose start task downloads its resource files (from Azurite) and runs
as a process in the node's own folder with Batch's AZ_BATCH_* variables, tasks scheduled one per
free node as processes with the job's common environment, terminate (SIGTERM, then SIGKILL),
remove-nodes and shrinking resizes with their nodeDeallocationOption, and preemption. The
modules: `state` (the account and its clock), `node` (a node's folders and processes), `wire`
(JSON shapes), `server` (HTTP, Shared Key), `environment` (what a node process starts from;
it documents the additions that make installs fast here: a dependencies view on PYTHONPATH,
no package index, stub `apt-get`, optional `nvidia-smi`).

Not emulated: Entra ID tokens are accepted unchecked, container tasks fail with a clear
reason (no docker here), autoscale, certificates, job schedules, multi-instance tasks.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import waiting
from tests.support.batch_emulator import environment, wire
from tests.support.batch_emulator.server import BatchService, Logged
from tests.support.batch_emulator.state import Account, Timing
from tests.support.emulator_host import EmulatorHost

__all__ = ["BatchEmulator", "Logged", "Timing", "batch_emulator"]

ACCOUNT = "emulated"
# A fixed, made-up key for the emulated account (base64, like a real one; not anyone's secret).
KEY = base64.b64encode(b"batch-emulator-shared-key-000000").decode()


class BatchEmulator(EmulatorHost):
    """One emulated Batch account on a loopback port; see the package docstring."""

    def __init__(self, root: Path, timing: Timing | None = None, dependencies_view: Path | None = None) -> None:
        self.root = root
        self.bin_dir = root / "bin"
        environment.write_image_commands(self.bin_dir)
        deps = dependencies_view or environment.dependencies_view(root / "site-deps")
        base_env = environment.base_environment(self.bin_dir, deps, root / "home")
        self._open_front()
        self.account = ACCOUNT
        self.key = KEY
        self.state: Account = Account(ACCOUNT, self.url, root, base_env, timing or Timing())
        self.service: BatchService = BatchService(self.state, KEY)
        self._serve(self.state, self.service, "batch-emulator-clock")

    def _groups(self, killed: list[subprocess.Popen[bytes]]) -> list[int]:
        return list(self.state.groups)  # every group a node ever started: a finished task's daemon too

    # --- what a test controls ---------------------------------------------------------------
    def put_command(self, name: str, script: str) -> Path:
        """Put an executable on every node's PATH (e.g. an `nvidia-smi` stub)."""
        return environment.write_command(self.bin_dir, name, script)

    def refuse_nodes(self, spot: bool, code: str, message: str) -> None:
        """From now on, resizes get no nodes of that kind and settle with this resize error
        (e.g. AccountSpotCoreQuotaReached: the account has no Spot quota)."""
        with self.state.lock:
            self.state.refusals[not spot] = (code, message)

    def preempt(self, pool_id: str, node_id: str, notice_s: float | None = None) -> None:
        """Preempt a Spot node: its processes get SIGKILL, its task is requeued.

        With `notice_s`, Azure's way: a Scheduled Events `Preempt` notice naming the node first
        (served at `/metadata/scheduledevents`), the kill `notice_s` later.
        """
        with self.state.lock:
            if notice_s is None:
                self.state.preempt(pool_id, node_id)
            else:
                self.state.announce_preemption(pool_id, node_id, notice_s)

    # --- what a test reads (the same JSON the API answers) ----------------------------------
    def pool(self, pool_id: str) -> dict[str, Any] | None:
        with self.state.lock:
            pool = self.state.pools.get(pool_id)
            return None if pool is None else wire.pool_json(self.state, pool)

    def nodes(self, pool_id: str) -> list[dict[str, Any]]:
        with self.state.lock:
            pool = self.state.pools.get(pool_id)
            if pool is None:
                return []
            nodes = sorted(pool.nodes.values(), key=lambda n: n.created)
            return [wire.node_json(self.state, pool, n) for n in nodes if not n.removed]

    def tasks(self, job_id: str) -> list[dict[str, Any]]:
        with self.state.lock:
            job = self.state.jobs.get(job_id)
            if job is None:
                return []
            return [wire.task_json(self.state, t) for t in sorted(job.tasks.values(), key=lambda t: t.created)]

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.state.lock:
            job = self.state.jobs.get(job_id)
            return None if job is None else wire.job_json(self.state, job)

    def start_task_tries(self, pool_id: str, node_id: str) -> list[dict[str, Any]]:
        """Every finished try of a node's start task: exitCode, failureInfo, its stderr (Batch shows only the last)."""
        with self.state.lock:
            pool = self.state.pools.get(pool_id)
            node = pool.nodes.get(node_id) if pool else None
            tries = list(node.start_history) if node else []
        return [
            {
                "exitCode": t.exit_code,
                "failureInfo": t.failure.as_json() if t.failure else None,
                "retryCount": t.retry_count,
                "stderr": t.stderr,
            }
            for t in tries
        ]

    def node_root(self, pool_id: str, node_id: str) -> Path:
        return self.root / "nodes" / pool_id / node_id

    def node_file(self, pool_id: str, node_id: str, relative: str) -> str:
        path = self.node_root(pool_id, node_id) / relative
        return path.read_text(errors="replace") if path.exists() else ""

    def node_pids(self) -> list[int]:
        """Process ids of every node process still running (start tasks and tasks)."""
        with self.state.lock:
            procs = [n.start_proc for p in self.state.pools.values() for n in p.nodes.values()]
            procs += [t.proc for j in self.state.jobs.values() for t in j.tasks.values()]
            return [p.popen.pid for p in procs if p is not None and p.popen.poll() is None]

    def wait_for(self, probe: Any, timeout_s: float = 60.0, what: str = "condition") -> Any:
        """Poll `probe()` until it returns something truthy; fail with `what` and the state."""
        try:
            return waiting.wait_for(probe, timeout_s=timeout_s, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {self.describe()}") from None

    def wait_for_nodes(self, pool_id: str, state: str, count: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        def probe() -> list[dict[str, Any]]:
            nodes = [n for n in self.nodes(pool_id) if n["state"] == state]
            return nodes if len(nodes) >= count else []

        result: list[dict[str, Any]] = self.wait_for(probe, timeout_s, f"{count} nodes {state} in pool {pool_id}")
        return result

    def describe(self) -> str:
        """The whole account in a few lines, for failure messages."""
        lines = []
        with self.state.lock:
            for pool in self.state.pools.values():
                target = f"{pool.target_dedicated}+{pool.target_low}"
                lines.append(f"pool {pool.id}: {pool.state}/{pool.allocation_state} target {target}")
                lines += [f"  node {n.id}: {n.state} task={n.task.id if n.task else None}" for n in pool.nodes.values()]
            for job in self.state.jobs.values():
                lines.append(f"job {job.id}: {job.state}")
                lines += [f"  task {t.id}: {t.state} node={t.node_id} exit={t.exit_code}" for t in job.tasks.values()]
        return "\n".join(lines) or "no pools, no jobs"


@contextmanager
def batch_emulator(
    root: Path, timing: Timing | None = None, dependencies_view: Path | None = None
) -> Iterator[BatchEmulator]:
    emulator = BatchEmulator(root, timing, dependencies_view).start()
    try:
        yield emulator
    finally:
        emulator.stop()
    if emulator.errors:
        raise AssertionError("the Batch emulator failed inside:\n" + "\n".join(emulator.errors))
