"""An Azure Machine Learning emulator for the tests: the Resource Manager routes the real
`azure-ai-ml` client calls, with real state and real job processes, so a test runs what
`orchestration launch --backend aml` asks a node to run.

    with aml_emulator(tmp_path, storage=azurite.connection_string) as aml:
        settings: WORKPOOL_ARM_ENDPOINT=aml.url, WORKPOOL_SUBSCRIPTION_ID=aml.subscription, ...
        ... launch ...
        aml.jobs(), aml.nodes("gpu"), aml.preempt("gpu", node_id, notice_s=5), aml.refuse_quota("LowPriority", ...)

What is real: an AmlCompute that adds a node per queued job up to its max and releases idle
nodes after its idle time; each job runs its command (`/bin/bash -c`, inputs downloaded into its
folder from Azurite, `${{inputs.<name>}}` replaced by their path) as a process group in its own
folder with the job's environment variables and a few of the variables AML sets (AZUREML_RUN_ID,
AZ_BATCHAI_CLUSTER_NAME, …); cancel with a grace period (SIGTERM, SIGKILL after
`Timing.cancel_grace_s`); low-priority preemption (optionally announced by Scheduled Events),
which requeues the job; a quota refusal; the job log (user_logs/std_log.txt) through run
history. The node image is the Batch emulator's (tests/support/batch_emulator/environment.py:
this venv's Python, a dependencies view, no package index, no GPU).

Not emulated: Entra ID (any bearer token is accepted; the identity's storage access is an
Azurite connection string the emulator gives the job, see `Workspace.identity_env`), containers and image builds
(the environment's image is recorded, the command runs on this machine), multi-node jobs, code
and data assets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import waiting
from tests.support.aml_emulator.server import AmlService, Logged
from tests.support.aml_emulator.state import Timing, Workspace
from tests.support.batch_emulator import environment
from tests.support.emulator_host import EmulatorHost

__all__ = ["AmlEmulator", "Logged", "Timing", "aml_emulator"]


class AmlEmulator(EmulatorHost):
    subscription = "00000000-0000-0000-0000-00000000a001"
    resource_group = "rg-scoring"
    workspace = "ws-scoring"

    def __init__(self, root: Path, storage: str, timing: Timing | None = None, dependencies_view: Path | None = None):
        self.root = root
        bin_dir = root / "bin"
        environment.write_image_commands(bin_dir)
        deps = dependencies_view or environment.dependencies_view(root / "site-deps")
        base_env = environment.base_environment(bin_dir, deps, root / "home")
        self._open_front()
        self.state: Workspace = Workspace(root, self.url, base_env, storage, timing or Timing())
        self.service: AmlService = AmlService(self.state)
        self._serve(self.state, self.service, "aml-emulator-clock")

    # --- what a test controls ---------------------------------------------------------------
    def refuse_quota(self, tier: str, message: str) -> None:
        """Computes of this tier ("Dedicated" or "LowPriority") are refused: the subscription has no quota."""
        with self.state.lock:
            self.state.quota_refusals[tier] = message

    def preempt(self, compute: str, node_id: str, notice_s: float | None = None) -> None:
        with self.state.lock:
            if not self.state.computes[compute].low_priority:
                raise AssertionError(f"node {node_id} is dedicated: only low-priority nodes are preempted")
            if notice_s is None:
                self.state.preempt(compute, node_id)
            else:
                self.state.announce_preemption(compute, node_id, notice_s)

    def identity_env(self) -> dict[str, str]:
        """Environment that makes DefaultAzureCredential sign in here (an App Service style identity endpoint)."""
        return {"IDENTITY_ENDPOINT": f"{self.url}/msi/token", "IDENTITY_HEADER": "emulated"}

    # --- what a test reads ------------------------------------------------------------------
    def jobs(self) -> list[dict[str, Any]]:
        with self.state.lock:
            jobs = sorted(self.state.jobs.values(), key=lambda j: j.created)
            return [
                {"name": j.name, "status": j.status, "node": j.node, "starts": j.starts, "properties": j.props}
                for j in jobs
            ]

    def compute(self, name: str) -> dict[str, Any] | None:
        with self.state.lock:
            compute = self.state.computes.get(name)
            return None if compute is None else dict(compute.body)

    def nodes(self, compute: str) -> list[dict[str, Any]]:
        with self.state.lock:
            found = self.state.computes.get(compute)
            nodes = list(found.nodes.values()) if found else []
            return [{"id": n.id, "state": n.state, "job": n.job} for n in nodes]

    def job_log(self, name: str) -> str:
        path = self.root / "jobs" / name / "user_logs" / "std_log.txt"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for(self, probe: Any, timeout_s: float = 60.0, what: str = "condition") -> Any:
        try:
            return waiting.wait_for(probe, timeout_s=timeout_s, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {self.describe()}") from None

    def describe(self) -> str:
        lines = []
        with self.state.lock:
            for compute in self.state.computes.values():
                lines.append(f"compute {compute.name}: max {compute.max_nodes}")
                lines += [f"  node {n.id}: {n.state} job={n.job}" for n in compute.nodes.values()]
            lines += [f"job {j.name}: {j.status} node={j.node} starts={j.starts}" for j in self.state.jobs.values()]
        return "\n".join(lines) or "no computes, no jobs"


@contextmanager
def aml_emulator(
    root: Path, storage: str, timing: Timing | None = None, dependencies_view: Path | None = None
) -> Iterator[AmlEmulator]:
    emulator = AmlEmulator(root, storage, timing, dependencies_view).start()
    try:
        yield emulator
    finally:
        emulator.stop()
    if emulator.errors:
        raise AssertionError("the AML emulator failed inside:\n" + "\n".join(emulator.errors))
