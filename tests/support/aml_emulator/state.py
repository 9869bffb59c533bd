"""The emulated workspace: computes with nodes, command jobs as real processes, and its clock.

Every change happens under `Workspace.lock`; the emulator's clock thread calls `tick()`, which
moves each job and node one step along AML's lifecycle:

- a job is `Queued` until an idle node of its compute takes it (`Preparing`: its input is
  downloaded into its folder; then `Running`: its command runs as a process); an exit 0 makes it
  `Completed`, anything else `Failed`; the node is `idle` again;
- a queued job with no idle node makes the compute add one (`preparing`, then `idle` after
  `Timing.node_boot_s`), up to `maxNodeCount` and unless a quota refusal is set;
- a node idle for the compute's `nodeIdleTimeBeforeScaleDown` leaves (min 0 nodes);
- cancel: a queued job is `Canceled` at once; a running one is `CancelRequested`, its process
  group gets SIGTERM, then SIGKILL after `Timing.cancel_grace_s`, and it ends `Canceled`;
- preemption (LowPriority computes only): the node is `preempted` and its processes killed,
  optionally after a Scheduled Events notice; its job goes back to `Queued` and is started again
  on another node (AML requeues jobs of preempted low-priority nodes).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.scheduled_events import scheduled_event

ACTIVE = {"NotStarted", "Queued", "Preparing", "Running", "CancelRequested"}


class AmlError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Timing:
    tick_s: float = 0.1
    node_boot_s: float = 0.5
    cancel_grace_s: float = 30.0


@dataclass
class Node:
    id: str
    state: str  # preparing | idle | running | leaving | preempted
    since: float
    job: str | None = None
    preempt_at: float | None = None


@dataclass
class Compute:
    name: str
    body: dict[str, Any]
    nodes: dict[str, Node] = field(default_factory=dict)
    counter: int = 0

    @property
    def props(self) -> dict[str, Any]:
        inner: dict[str, Any] = self.body["properties"].setdefault("properties", {})
        return inner

    @property
    def low_priority(self) -> bool:
        return str(self.props.get("vmPriority", "Dedicated")).lower() == "lowpriority"

    @property
    def max_nodes(self) -> int:
        return int(self.props.get("scaleSettings", {}).get("maxNodeCount", 0))

    @property
    def idle_s(self) -> float:
        text = str(self.props.get("scaleSettings", {}).get("nodeIdleTimeBeforeScaleDown") or "PT120S")
        match = re.fullmatch(r"PT(?:(\d+)M)?(?:(\d+)S)?", text)
        return float(int(match.group(1) or 0) * 60 + int(match.group(2) or 0)) if match else 120.0


@dataclass
class Job:
    name: str
    body: dict[str, Any]
    status: str = "Queued"
    node: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    term_at: float | None = None  # when SIGTERM was sent (cancel)
    starts: int = 0
    created: float = field(default_factory=time.time)

    @property
    def props(self) -> dict[str, Any]:
        props: dict[str, Any] = self.body["properties"]
        return props


class Workspace:
    def __init__(self, root: Path, url: str, base_env: dict[str, str], storage: str, timing: Timing) -> None:
        self.root = root
        self.url = url
        self.base_env = base_env
        self.storage = storage  # Azurite's connection string: what the compute's identity may read
        self.timing = timing
        self.lock = threading.RLock()
        self.computes: dict[str, Compute] = {}
        self.environments: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, Job] = {}
        self.quota_refusals: dict[str, str] = {}  # tier ("Dedicated"/"LowPriority") → message
        self.events: list[dict[str, Any]] = []
        self.incarnation = 1

    # --- the clock ----------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.time()
        for job in self.jobs.values():
            self._step_job(job, now)
        for compute in self.computes.values():
            self._step_nodes(compute, now)

    def _step_job(self, job: Job, now: float) -> None:
        if job.status == "Running" and job.proc is not None and job.proc.poll() is not None:
            code = job.proc.returncode
            job.proc = None
            self._free(job)
            if job.term_at is not None:
                job.status = "Canceled"
            else:
                job.status = "Completed" if code == 0 else "Failed"
                job.props["emulatorExitCode"] = code
        elif job.status == "CancelRequested":
            if job.proc is None or job.proc.poll() is not None:
                job.proc = None
                self._free(job)
                job.status = "Canceled"
            elif job.term_at is not None and now - job.term_at > self.timing.cancel_grace_s:
                _signal(job.proc, signal.SIGKILL)
        elif job.status == "Queued":
            compute = self.computes.get(self.compute_of(job))
            if compute is None:
                return
            node = next((n for n in compute.nodes.values() if n.state == "idle"), None)
            if node is not None:
                self._start(job, compute, node)

    def _step_nodes(self, compute: Compute, now: float) -> None:
        queued = [j for j in self.jobs.values() if j.status == "Queued" and self.compute_of(j) == compute.name]
        live = [n for n in compute.nodes.values() if n.state in ("preparing", "idle", "running")]
        waiting = len(queued) - len([n for n in live if n.state in ("preparing", "idle")])
        tier = "LowPriority" if compute.low_priority else "Dedicated"
        while waiting > 0 and len(live) < compute.max_nodes and tier not in self.quota_refusals:
            compute.counter += 1
            node = Node(f"tvmps_{compute.counter:05d}_{tier[0].lower()}", "preparing", now)
            compute.nodes[node.id] = node
            live.append(node)
            waiting -= 1
        for node in list(compute.nodes.values()):
            if node.state == "preparing" and now - node.since >= self.timing.node_boot_s:
                node.state, node.since = "idle", now
            elif now - node.since >= {"idle": compute.idle_s, "preempted": 1.0}.get(node.state, float("inf")):
                del compute.nodes[node.id]  # released after its idle time; a preempted one is gone
            elif node.preempt_at is not None and now >= node.preempt_at:
                self.preempt(compute.name, node.id)

    # --- jobs ---------------------------------------------------------------------------------
    def compute_of(self, job: Job) -> str:
        return str(job.props.get("computeId", "")).rsplit("/", 1)[-1]

    def folder(self, job: Job) -> Path:
        return self.root / "jobs" / job.name

    def _start(self, job: Job, compute: Compute, node: Node) -> None:
        node.state, node.job, node.since = "running", job.name, time.time()
        job.node, job.status = node.id, "Preparing"
        job.starts += 1
        folder = self.folder(job)
        wd = folder / "wd"
        logs = folder / "user_logs"
        for path in (wd, logs, folder / "inputs"):
            path.mkdir(parents=True, exist_ok=True)
        command = str(job.props.get("command", ""))
        log = open(logs / "std_log.txt", "ab")  # noqa: SIM115 - handed to the process
        try:
            identity = job.props.get("identity") or {}
            if identity.get("identityType") != "Managed" or not compute.body.get("identity"):
                log.write(b"AuthorizationFailure: the job runs without the compute's managed identity\n")
                raise _JobFailed()
            for name, spec in (job.props.get("inputs") or {}).items():
                target = folder / "inputs" / name / str(spec["uri"]).rsplit("/", 1)[-1].split("?", 1)[0]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.read_blob(str(spec["uri"])))
                command = command.replace("${{inputs." + name + "}}", str(target))
        except (_JobFailed, OSError) as exc:
            if not isinstance(exc, _JobFailed):
                log.write(f"UserError: downloading the job's inputs failed: {exc}\n".encode())
            log.close()
            job.status = "Failed"
            self._free(job)
            return
        env = dict(self.base_env)
        env.update({str(k): str(v) for k, v in (job.props.get("environmentVariables") or {}).items()})
        self.identity_env(env)
        env.update(
            {
                "AZUREML_RUN_ID": job.name,
                "AZUREML_ARM_PROJECT_NAME": str(job.props.get("experimentName", "")),
                "AZUREML_ARM_WORKSPACE_NAME": "emulated",
                "AZ_BATCHAI_CLUSTER_NAME": compute.name,
                "AZ_BATCH_NODE_ID": node.id,
                "AZUREML_CR_NODE_ID": node.id,
            }
        )
        job.proc = subprocess.Popen(
            ["/bin/bash", "-c", command],
            cwd=wd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        job.status = "Running"

    def identity_env(self, env: dict[str, str]) -> None:
        """What the job's managed identity gives its processes here: access to Azurite.

        On Azure the consumers get Entra ID tokens for the identity and reach the account named by
        WORKPOOL_ACCOUNT_URL; Azurite takes no Entra ID over plain http and serves blobs and
        queues on separate ports, so the emulator hands the same access as Azurite's connection
        string in place of the account URL. The launcher never sends one (the tests check its bodies).
        """
        env.pop("WORKPOOL_ACCOUNT_URL", None)
        env["AZURE_STORAGE_CONNECTION_STRING"] = self.storage

    def read_blob(self, uri: str) -> bytes:
        from azure.storage.blob import BlobClient

        parts = dict(p.split("=", 1) for p in self.storage.split(";") if "=" in p)
        blob = BlobClient.from_blob_url(
            uri, credential={"account_name": parts["AccountName"], "account_key": parts["AccountKey"]}
        )
        return blob.download_blob().readall()

    def _free(self, job: Job) -> None:
        compute = self.computes.get(self.compute_of(job))
        node = compute.nodes.get(job.node or "") if compute else None
        if node is not None and node.job == job.name and node.state == "running":
            node.state, node.job, node.since = "idle", None, time.time()

    def cancel(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is None:
            raise AmlError(404, "UserError", f"job {name} not found")
        if job.status in ("Queued", "NotStarted", "Preparing"):
            job.status = "Canceled"
            self._free(job)
        elif job.status == "Running" and job.proc is not None:
            job.status, job.term_at = "CancelRequested", time.time()
            _signal(job.proc, signal.SIGTERM)

    def preempt(self, compute_name: str, node_id: str) -> None:
        compute = self.computes[compute_name]
        node = compute.nodes[node_id]
        node.preempt_at = None
        self.events = [e for e in self.events if node_id not in e["Resources"]]
        self.incarnation += 1
        job = self.jobs.get(node.job or "")
        node.state, node.job, node.since = "preempted", None, time.time()
        if job is not None:
            if job.proc is not None:
                _signal(job.proc, signal.SIGKILL)
                job.proc.wait(timeout=10)
                job.proc = None
            job.node = None
            job.status = "Queued"  # requeued onto another node

    def announce_preemption(self, compute_name: str, node_id: str, notice_s: float) -> None:
        node = self.computes[compute_name].nodes[node_id]
        not_before = time.time() + notice_s
        self.events.append(
            scheduled_event(
                f"emulated-{node_id}-{self.incarnation + 1}",
                [node_id],
                not_before,
                "The low-priority VM is being evicted",
            )
        )
        self.incarnation += 1
        node.preempt_at = not_before

    def node_of_pid_group(self, group: int) -> str | None:
        for job in self.jobs.values():
            if job.proc is not None and job.proc.pid == group:
                return job.node
        return None

    def groups(self) -> set[int]:
        return {j.proc.pid for j in self.jobs.values() if j.proc is not None}

    def kill_everything(self) -> list[subprocess.Popen[bytes]]:
        procs = [j.proc for j in self.jobs.values() if j.proc is not None]
        for proc in procs:
            _signal(proc, signal.SIGKILL)
        return procs


class _JobFailed(Exception):
    pass


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
