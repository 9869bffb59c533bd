"""Azure Machine Learning launcher (`--backend aml`): an AmlCompute cluster, one command job per node.

AmlCompute is Batch AI's successor (Batch AI was retired; its clusters became AML managed
compute). Drives the real `azure-ai-ml` v2 SDK (MLClient: computes, jobs); what is sent is
built in orchestration/backends/aml_bodies.py.

- `launch N`: the compute is created when absent (min 0 nodes, max N, idle scale-down
  WORKPOOL_AML_IDLE_SCALE_DOWN_S) and reused when present (a different size or tier is
  reported, never silently changed; a max below N is raised). This checkout's wheel is uploaded
  to the result store (orchestration/wheel.py) and N jobs are submitted; AML adds a node per
  queued job, up to max.
- `scale M`: more jobs (raising the compute's max first), or cancel the newest jobs and wait
  until they have ended: AML's cancel sends the consumer SIGTERM, it finishes the batch it
  scores (up to WORKPOOL_STOP_FINISH_S) and releases the others; the node idles and AML
  releases it after the idle time.
- `teardown`: cancel every job (idempotent); `--delete` also deletes the compute.

Identity only: the compute gets the user-assigned identity WORKPOOL_MANAGED_IDENTITY_ID and each
job runs as it, so the consumers reach queue and results with Entra ID. A key, SAS token or
connection string is never put into a compute or job definition (anyone who can read the
workspace reads those); without an identity the launch is refused (exit 2).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from azure.core.exceptions import ResourceNotFoundError

from orchestration.backends import aml_bodies as bodies
from orchestration.backends.aml_logs import job_log, job_log_source
from orchestration.backends.cluster_common import (
    CONSUMER_PREFIX,
    Made,
    bearer_policy,
    cluster_errors,
    default_credential,
    require,
    require_azure_storage,
    text_of,
)
from orchestration.backends.vm_sizes import checked_vm_size, warn_about_priority
from orchestration.launcher import ClusterState, Launcher, LogSource, NodeInfo, PlannedRequest
from orchestration.wheel import planned_files, ship_node_files
from workpool.errors import NotFoundError, SettingsError, WorkpoolError
from workpool.logs import redact
from workpool.settings import Settings, env_name

log = logging.getLogger(__name__)

ACTIVE = {"NotStarted", "Starting", "Provisioning", "Preparing", "Queued", "Running", "Finalizing", "CancelRequested"}
# How long scale-in waits for cancelled consumers beyond their finish window (they release the rest at once).
RELEASE_MARGIN_S = 60.0
LOG_TAIL_CHARS = 1500
PUBLIC_ARM = "management.azure.com"
NODE_STATES = ("idle", "running", "preparing", "preempted")
CLOUD_ENV = "AZUREML_CURRENT_CLOUD"
CLOUD_PREFIX = "workpool:"  # the name of a cloud this launcher describes to the SDK (not the public one)


def job_prefix(settings: Settings) -> str:
    """Job names are unique in a workspace for ever: the prefix names the compute and the queue."""
    return f"{settings.cluster}-{settings.queue}-{CONSUMER_PREFIX}"


class AmlLauncher(Launcher):
    name = "aml"
    min_launch_nodes = 0  # the compute is created empty (min 0 nodes); jobs bring the nodes

    def __init__(self, settings: Settings, credential: Any = None) -> None:
        self.settings = settings
        self._credential = credential
        self._ml: Any = None
        warn_about_priority(settings)

    # --- the Launcher interface -----------------------------------------------------------
    def _launch(self, nodes: int) -> None:
        self._require()
        made = Made(self.name)
        compute = self._get_compute(made)
        if compute is None:
            self._create_compute(nodes, made)
        else:
            self._check_reused(compute)
            self._ensure_max(compute, nodes, made)
        self._converge(nodes, made)

    def _scale(self, nodes: int) -> None:
        self._require()
        made = Made(self.name)
        compute = self._get_compute(made)
        if compute is None:
            raise NotFoundError(
                f"AML compute {self.settings.cluster} does not exist: run `orchestration launch --backend aml` first"
            )
        self._ensure_max(compute, nodes, made)
        self._converge(nodes, made)

    def _teardown(self, delete: bool) -> None:
        self._require(storage=False)
        made = Made(self.name)
        active = self._active_jobs()
        for job in active:
            self._cancel(job.name, made)
        if active:
            self._await_ended({j.name for j in active})
        if delete and self._get_compute(made) is not None:
            with self._calling(f"deleting AML compute {self.settings.cluster}", self.settings, made):
                self._client().compute.begin_delete(self.settings.cluster).result()
            made.add(f"deleted compute {self.settings.cluster}")

    def state(self) -> ClusterState:
        self._require(storage=False)
        s = self.settings
        compute = self._get_compute()
        if compute is None:
            return ClusterState(self.name, 0, [], f"compute {s.cluster} does not exist")
        jobs = self._jobs()
        active = [j for j in jobs if j.status in ACTIVE]
        counts = self._node_counts()
        detail = (
            f"compute {s.cluster}: {compute.size}, {text_of(compute.tier)}, max {compute.max_instances}; nodes: "
            + ", ".join(f"{n} {what}" for what, n in counts.items())
        )
        infos = [NodeInfo(j.name, j.status, self._job_detail(j)) for j in active]
        failed = [j for j in jobs if j.status == "Failed"][-3:]
        infos += [NodeInfo(j.name, j.status, self._job_detail(j)) for j in failed]
        return ClusterState(self.name, len(active), infos, detail)

    def failure(self) -> str | None:
        """Every job of this pool failed (none is still queued or running): the newest one's reason."""
        self._require(storage=False)
        jobs = self._jobs()
        if not jobs or any(j.status in ACTIVE for j in jobs) or jobs[-1].status != "Failed":
            return None
        newest = jobs[-1]
        return f"job {newest.name} failed: {self._job_detail(newest)}"

    def _describe(self, nodes: int) -> list[PlannedRequest]:
        self._require()
        s = self.settings
        files = planned_files(s)
        name, url = (files.wheel.file_name, files.wheel.url) if files.wheel else ("", "")
        sha = files.wheel.sha256 if files.wheel and files.wheel.sha256 else "<sha256 of the wheel launch builds>"
        wheel = bodies.Wheel(name, url, sha)
        ws = bodies.workspace_path(s)
        plan = [
            PlannedRequest(
                "PUT",
                f"{ws}/computes/{s.cluster}?api-version={bodies.ARM_API_VERSION}",
                bodies.compute_body(s, nodes),
                "the AmlCompute cluster, when absent (reused when present)",
            )
        ]
        prefix = job_prefix(s)
        blob = files.wheel.blob_name if files.wheel else ""
        for index in range(1, nodes + 1):
            job = f"{prefix}{index:04d}"
            plan.append(
                PlannedRequest(
                    "PUT",
                    f"{ws}/jobs/{job}?api-version={bodies.JOBS_API_VERSION}",
                    bodies.job_body(s, job, wheel),
                    f"one consumer job per node; its input {bodies.WHEEL_INPUT} is {blob} (uploaded at launch)",
                )
            )
        return plan

    # --- compute --------------------------------------------------------------------------
    def _get_compute(self, made: Made | None = None) -> Any:
        with self._calling(f"reading AML compute {self.settings.cluster}", self.settings, made):
            try:
                return self._client().compute.get(self.settings.cluster)
            except ResourceNotFoundError:
                return None

    def _create_compute(self, nodes: int, made: Made) -> None:
        s = self.settings
        what = f"creating AML compute {s.cluster} ({s.vm_size}, {bodies.tier(s)}, 0..{max(1, nodes)} nodes)"
        with self._calling(what, s, made):
            created = self._client().compute.begin_create_or_update(bodies.compute_entity(s, nodes)).result()
        if str(getattr(created, "provisioning_state", "") or "").lower() == "failed":
            errors = "; ".join(str(e) for e in getattr(created, "provisioning_errors", None) or [])
            raise WorkpoolError(f"{what} failed: provisioning state Failed {errors}; {made.note()}")
        made.add(f"compute {s.cluster}")

    def _check_reused(self, compute: Any) -> None:
        """A compute made earlier with another size or tier is used as it is, with a warning saying so."""
        s = self.settings
        differences = []
        if (compute.size or "").lower() != (s.vm_size or "").lower():
            differences.append(f"size {compute.size} (asked {s.vm_size})")
        if text_of(compute.tier).lower().replace("_", "") != bodies.tier(s).replace("_", ""):
            differences.append(f"tier {text_of(compute.tier)} (asked {bodies.tier(s)})")
        if differences:
            log.warning(
                "AML compute %s exists with %s: reusing it as it is; delete it (`orchestration teardown --backend aml "
                "--delete`) or choose another %s to get what you asked",
                s.cluster,
                " and ".join(differences),
                env_name("cluster"),
            )

    def _ensure_max(self, compute: Any, nodes: int, made: Made) -> None:
        if (compute.max_instances or 0) >= nodes:
            return
        s = self.settings
        compute.max_instances = nodes
        with self._calling(f"raising the max nodes of AML compute {s.cluster} to {nodes}", s, made):
            self._client().compute.begin_update(compute).result()
        made.add(f"compute {s.cluster} max nodes {nodes}")

    # --- jobs -----------------------------------------------------------------------------
    def _jobs(self) -> list[Any]:
        """This pool's consumer jobs (finished ones included), oldest first."""
        prefix = job_prefix(self.settings)
        with self._calling("listing AML jobs", self.settings):
            jobs = [j for j in self._client().jobs.list() if (j.name or "").startswith(prefix)]
        return sorted(jobs, key=lambda j: _index(j.name, prefix))

    def log_sources(self) -> list[LogSource]:
        """Every consumer job's own log, through the run history (`orchestration logs`)."""
        return [job_log_source(self._client, job.name) for job in self._jobs()]

    def _active_jobs(self) -> list[Any]:
        return [j for j in self._jobs() if j.status in ACTIVE and j.status != "CancelRequested"]

    def _converge(self, nodes: int, made: Made) -> None:
        jobs = self._jobs()
        active = [j for j in jobs if j.status in ACTIVE and j.status != "CancelRequested"]
        if len(active) > nodes:
            surplus = list(reversed(active[nodes:]))  # newest first: they have done the least work
            for job in surplus:
                self._cancel(job.name, made)
            self._await_ended({j.name for j in surplus})
            return
        missing = nodes - len(active)
        if not missing:
            return
        wheel = self._ship(made)
        prefix = job_prefix(self.settings)
        first = max((_index(j.name, prefix) for j in jobs), default=0) + 1
        for index in range(first, first + missing):
            name = f"{prefix}{index:04d}"
            with self._calling(f"submitting AML job {name}", self.settings, made):
                self._client().jobs.create_or_update(bodies.job_entity(self.settings, name, wheel))
            made.add(f"job {name}")

    def _cancel(self, name: str, made: Made) -> None:
        with self._calling(f"cancelling AML job {name}", self.settings, made):
            try:
                self._client().jobs.begin_cancel(name).result()
            except ResourceNotFoundError:
                return
        made.add(f"cancelled job {name}")

    def _await_ended(self, names: set[str]) -> None:
        """Wait until cancelled jobs have ended: their consumers finish or release their batches first."""
        s = self.settings
        budget = s.stop_finish_s + RELEASE_MARGIN_S
        deadline = time.monotonic() + budget
        while True:
            running = {j.name for j in self._jobs() if j.name in names and j.status in ACTIVE}
            if not running:
                return
            if time.monotonic() > deadline:
                log.warning(
                    "job(s) %s still stopping after %.0f s; their batches come back when their lease runs out",
                    ", ".join(sorted(running)),
                    budget,
                )
                return
            time.sleep(max(0.2, s.cluster_poll_interval_s))

    def _node_counts(self) -> dict[str, int]:
        """The compute's nodes by state (idle, running, preparing, preempted, …), zeros of the first four included."""
        counts = dict.fromkeys(NODE_STATES, 0)
        with self._calling(f"listing the nodes of AML compute {self.settings.cluster}", self.settings):
            for node in self._client().compute.list_nodes(self.settings.cluster):
                state = text_of(node.node_state) or "unknown"
                counts[state] = counts.get(state, 0) + 1
        return counts

    def _job_detail(self, job: Any) -> str:
        parts = []
        if job.status == "Failed":
            tail = self._log_tail(job.name)
            if tail:
                parts.append(f"its log ends: {tail}")
        return ", ".join(parts)

    def _log_tail(self, name: str) -> str:
        """The end of a job's user log (user_logs/std_log.txt), secrets redacted; '' when unreadable."""
        data, message = job_log(self._client, name)
        text = (data or b"").decode("utf-8", "replace")
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()][-8:]
        tail = " | ".join(lines)[-LOG_TAIL_CHARS:] or (message or "")
        return redact(tail, self.settings.secret_values())

    # --- shipping -------------------------------------------------------------------------
    def _ship(self, made: Made) -> bodies.Wheel:
        s = self.settings
        if s.node_package is not None:
            log.warning(
                "%s is ignored by the aml backend: its nodes install this checkout's wheel", env_name("node_package")
            )
        files = ship_node_files(s, identity=True)
        assert files.wheel is not None and files.wheel.sha256 is not None
        made.add(f"uploaded {files.wheel.blob_name} to container {s.node_files}")
        return bodies.Wheel(files.wheel.file_name, files.wheel.url, files.wheel.sha256)

    # --- plumbing -------------------------------------------------------------------------
    @contextmanager
    def _calling(self, what: str, settings: Settings, made: Made | None = None) -> Iterator[None]:
        """An SDK call: its errors in words (cluster_errors), its marshmallow deprecation warnings silenced."""
        with cluster_errors(what, settings, made), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield

    def _require(self, storage: bool = True) -> None:
        s = self.settings
        require(s, "aml", "subscription_id", "resource_group", "workspace", "cluster")
        checked_vm_size(s, "aml")
        if not storage:
            return
        require_azure_storage(s, "aml")
        if not s.managed_identity_id:
            configured = "a connection string" if s.connection_string is not None else "a SAS token or key"
            raise SettingsError(
                f"the aml backend needs {env_name('managed_identity_id')} (and "
                f"{env_name('managed_identity_client_id')}): its nodes reach the queue and the result store with that "
                f"user-assigned identity, and {configured} is never put into a compute or job definition, which "
                "every reader of the workspace can read (docs/azure.md, Azure Machine Learning compute)"
            )

    def _client(self) -> Any:
        if self._ml is None:
            s = self.settings
            # azure-ai-ml records the cloud in os.environ (AZUREML_CURRENT_CLOUD), where processes this one
            # starts (the autoscaler) inherit it before their SDK knows that cloud: forget ours first.
            if os.environ.get(CLOUD_ENV, "").startswith(CLOUD_PREFIX):
                del os.environ[CLOUD_ENV]
            ml, _ = bodies.sdk()
            credential = self._credential if self._credential is not None else default_credential()
            options: dict[str, Any] = {"show_progress": False, "enable_telemetry": False}
            host = (urlparse(s.arm_endpoint).hostname or "").lower()
            if host != PUBLIC_ARM:
                # Another cloud or a loopback emulator: the SDK's cloud metadata, pointed at this endpoint.
                url = s.arm_endpoint.rstrip("/")
                options["cloud"] = f"{CLOUD_PREFIX}{urlparse(s.arm_endpoint).netloc}"
                options["cloud_metadata"] = {
                    "azure_portal": url,
                    "resource_manager": url + "/",
                    "active_directory": url,
                    "aml_resource_id": url,
                    "storage_endpoint": "core.windows.net",
                    "registry_discovery_endpoint": url,
                }
                options["authentication_policy"] = bearer_policy(credential, url + "/.default", arm=True)
            options["retry_total"] = 2
            options["retry_backoff_factor"] = 0.5
            self._ml = ml.MLClient(credential, s.subscription_id, s.resource_group, s.workspace, **options)
        return self._ml


def _index(name: str | None, prefix: str) -> int:
    tail = (name or "")[len(prefix) :]
    return int(tail) if tail.isdigit() else 0
