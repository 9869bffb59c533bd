"""Azure Batch launcher (`--backend azure-batch`): a GPU pool, a job, one consumer task per node.

The live engine for `orchestration launch --nodes 32` (docs/azure.md walks through it). Drives
the real SDKs: azure-batch 15 (data plane: pools, jobs, tasks) and, only when the pool gets a
user-assigned managed identity, azure-mgmt-batch (the identity can be set only through ARM).

Shape: pool of N nodes (one task slot each; a start task installs the project into a virtualenv)
→ job `WORKPOOL_BATCH_JOB` whose common environment carries the queue and storage settings →
tasks `consumer-0001…` running `consumer run --workers auto`, one per node. Low-priority (spot)
nodes: when one is preempted Batch requeues its task, and the batches it leased come back to
the queue when their visibility timeout passes.

Secrets: Azure Batch has no secret environment variables. With a managed identity
(`WORKPOOL_MANAGED_IDENTITY_ID`) nodes sign in to storage with `DefaultAzureCredential` and no
key travels at all. Without one, a SAS token or connection string travels in the job's
environment: encrypted at rest by Batch and never on a command line, but readable by anyone who
can read the Batch account's jobs; the launcher says so in a warning.
"""

from __future__ import annotations

import logging
import math
from typing import Any
from urllib.parse import urlparse

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.batch.models._models import BatchJobTerminateOptions as _JobTerminateOptions
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from orchestration.backends.cluster_common import (
    Made,
    arm_client_options,
    bearer_policy,
    cluster_errors,
    consumer_command,
    consumer_index,
    consumer_name,
    default_credential,
    install_command,
    package_source,
    require,
    require_azure_storage,
    text_of,
)
from orchestration.launcher import ClusterState, Launcher, NodeInfo, PlannedRequest
from workpool.errors import NotFoundError, SettingsError, UsageError, WorkpoolError
from workpool.handoff import node_environment
from workpool.logs import REDACTED
from workpool.settings import Settings, env_name

log = logging.getLogger(__name__)

BATCH_API_VERSION = "2025-06-01"
ARM_BATCH_API_VERSION = "2025-06-01"  # azure-mgmt-batch 19
ACTIVE_TASK_STATES = {"active", "preparing", "running"}
TASKS_PER_REQUEST = 100  # the task-collection API takes at most 100 tasks per request
TASK_RETRIES = 3  # a consumer that crashes is restarted this often before its task fails


class AzureBatchLauncher(Launcher):
    name = "azure-batch"

    def __init__(self, settings: Settings, credential: Any = None) -> None:
        self.settings = settings
        self._credential = credential
        self._batch: BatchClient | None = None
        self._pool = settings.pool or ""
        self._job = settings.batch_job

    # --- the Launcher interface -----------------------------------------------------------
    def launch(self, nodes: int) -> None:
        _check_nodes(nodes)
        self._require()
        require_azure_storage(self.settings, "azure-batch")
        self._warn_about_keys()
        made = Made(self.name)
        pool = self._get_pool(made)
        if pool is None:
            self._create_pool(nodes, made)
        elif _target_of(pool) != nodes:
            self._resize(nodes, made)
        self._ensure_job(made)
        self._converge_tasks(nodes, made)

    def scale(self, nodes: int) -> None:
        _check_nodes(nodes, allow_zero=True)
        self._require()
        made = Made(self.name)
        pool = self._get_pool(made)
        if pool is None:
            raise NotFoundError(f"Azure Batch pool {self._pool} does not exist: run `orchestration launch` first")
        if nodes > _target_of(pool):
            self._resize(nodes, made)
            self._ensure_job(made)
            self._converge_tasks(nodes, made)
        else:
            # Stop the surplus consumers first, so the shrinking pool gives back idle nodes.
            self._converge_tasks(nodes, made)
            self._resize(nodes, made)

    def state(self) -> ClusterState:
        self._require()
        pool = self._get_pool()
        if pool is None:
            return ClusterState(self.name, 0, [], f"pool {self._pool} does not exist")
        detail = (
            f"pool {self._pool}: {text_of(pool.state)}, allocation {text_of(pool.allocation_state)}, "
            f"{pool.current_dedicated_nodes or 0} dedicated + {pool.current_low_priority_nodes or 0} low-priority nodes"
        )
        for error in pool.resize_errors or []:
            detail += f"; resize error {error.code}: {error.message}"
        tasks = self._tasks()
        counts: dict[str, int] = {}
        for task in tasks:
            counts[text_of(task.state)] = counts.get(text_of(task.state), 0) + 1
        if counts:
            detail += f"; job {self._job}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        with cluster_errors(f"listing nodes of Azure Batch pool {self._pool}", self.settings):
            nodes = list(self._client().list_nodes(self._pool))
        infos = [NodeInfo(node.id, text_of(node.state), _node_detail(node)) for node in nodes]
        return ClusterState(self.name, _target_of(pool), infos, detail)

    def teardown(self, delete: bool = False) -> None:
        self._require()
        s = self.settings
        made = Made(self.name)
        client = self._client()
        job = self._get_job()
        if job is not None and text_of(job.state) in {"active", "disabled", "disabling", "enabling"}:
            with cluster_errors(f"terminating Azure Batch job {self._job}", s, made):
                # azure-batch 15.1 fails to build this request without options (no content
                # type) and does not export the options model: take it from where it lives.
                options = _JobTerminateOptions(termination_reason="workpool teardown")
                client.begin_terminate_job(self._job, options=options, polling_interval=_seconds(s)).result()
            made.add(f"terminated job {self._job}")
        if delete:
            if job is not None:
                with cluster_errors(f"deleting Azure Batch job {self._job}", s, made):
                    client.begin_delete_job(self._job, polling_interval=_seconds(s))
                made.add(f"deleting job {self._job}")
            if self._get_pool(made) is not None:
                with cluster_errors(f"deleting Azure Batch pool {self._pool}", s, made):
                    # Deleting a pool takes minutes; the poller finishes in the background.
                    client.begin_delete_pool(self._pool, polling_interval=_seconds(s))
                made.add(f"deleting pool {self._pool}")
        elif self._get_pool(made) is not None:
            self._resize(0, made)

    def describe(self, nodes: int) -> list[PlannedRequest]:
        _check_nodes(nodes)
        self._require()
        plan = []
        if self.settings.managed_identity_id:
            plan.append(
                PlannedRequest(
                    "PUT",
                    self._arm_pool_path() + f"?api-version={ARM_BATCH_API_VERSION}",
                    self._arm_pool_body(nodes, redacted=True).as_dict(),
                    "through Azure Resource Manager: only ARM can give a pool a managed identity",
                )
            )
        else:
            plan.append(
                PlannedRequest(
                    "POST", self._batch_path("/pools"), self._pool_body(nodes, redacted=True).as_dict(), "the GPU pool"
                )
            )
        plan.append(
            PlannedRequest(
                "POST",
                self._batch_path("/jobs"),
                self._job_body(redacted=True).as_dict(),
                "the job; its environment reaches every consumer task",
            )
        )
        ids = [consumer_name(i) for i in range(1, nodes + 1)]
        for start in range(0, len(ids), TASKS_PER_REQUEST):
            chunk = ids[start : start + TASKS_PER_REQUEST]
            plan.append(
                PlannedRequest(
                    "POST",
                    self._batch_path(f"/jobs/{self._job}/addtaskcollection"),
                    {"value": [self._task_body(task_id).as_dict() for task_id in chunk]},
                    "one consumer task per node",
                )
            )
        return plan

    # --- pool -----------------------------------------------------------------------------
    def _get_pool(self, made: Made | None = None) -> Any:
        with cluster_errors(f"reading Azure Batch pool {self._pool}", self.settings, made):
            try:
                return self._client().get_pool(self._pool)
            except ResourceNotFoundError:
                return None

    def _create_pool(self, nodes: int, made: Made) -> None:
        s = self.settings
        what = f"creating Azure Batch pool {self._pool} ({nodes} × {s.vm_size}, {s.vm_priority})"
        if s.managed_identity_id:
            self._create_pool_through_arm(nodes, what, made)
        else:
            with cluster_errors(what, s, made):
                self._client().create_pool(self._pool_body(nodes))
        made.add(f"pool {self._pool} with {nodes} nodes")

    def _resize(self, nodes: int, made: Made) -> None:
        s = self.settings
        dedicated, low = _split(nodes, s.vm_priority)
        options = bm.BatchPoolResizeOptions(
            target_dedicated_nodes=dedicated,
            target_low_priority_nodes=low,
            # The surplus consumer tasks were terminated first: wait for nothing else.
            node_deallocation_option="taskcompletion",
        )
        with cluster_errors(f"resizing Azure Batch pool {self._pool} to {nodes} nodes", s, made):
            # Resizing takes minutes; the poller watches for the steady state in the background
            # and `orchestration status` shows the allocation state meanwhile.
            self._client().begin_resize_pool(self._pool, options, polling_interval=_seconds(s))
        made.add(f"pool {self._pool} resizing to {nodes} nodes")

    def _pool_body(self, nodes: int, redacted: bool = False) -> Any:
        s = self.settings
        dedicated, low = _split(nodes, s.vm_priority)
        return bm.BatchPoolCreateOptions(
            id=self._pool,
            vm_size=s.vm_size,
            virtual_machine_configuration=bm.VirtualMachineConfiguration(
                image_reference=bm.BatchVmImageReference(
                    publisher=s.image_publisher, offer=s.image_offer, sku=s.image_sku, version=s.image_version
                ),
                node_agent_sku_id=s.node_agent_sku_id,
            ),
            target_dedicated_nodes=dedicated,
            target_low_priority_nodes=low,
            task_slots_per_node=1,
            start_task=bm.BatchStartTask(
                command_line=install_command(),
                environment_settings=[
                    bm.EnvironmentSetting(name="WORKPOOL_NODE_PACKAGE", value=package_source(s, redacted))
                ],
                # Installing into /opt needs root; the consumer tasks run as the default
                # non-admin user.
                user_identity=bm.UserIdentity(
                    auto_user=bm.AutoUserSpecification(scope="pool", elevation_level="admin")
                ),
                wait_for_success=True,
                max_task_retry_count=2,
            ),
        )

    def _create_pool_through_arm(self, nodes: int, what: str, made: Made) -> None:
        s = self.settings
        require(s, "azure-batch with a managed identity", "subscription_id", "resource_group")
        from azure.mgmt.batch import BatchManagementClient

        credential = self._credential if self._credential is not None else default_credential()
        client = BatchManagementClient(
            credential, s.subscription_id or "", base_url=s.arm_endpoint, **arm_client_options(s, credential)
        )
        with cluster_errors(what, s, made):
            pool = client.pool.create(
                s.resource_group or "", self._account_name(), self._pool, self._arm_pool_body(nodes)
            )
        state = str(getattr(pool, "provisioning_state", "") or "")
        if state.lower() == "failed":
            raise WorkpoolError(f"{what} failed: provisioning state Failed; {made.note()}")

    def _arm_pool_body(self, nodes: int, redacted: bool = False) -> Any:
        from azure.mgmt.batch import models as am

        s = self.settings
        dedicated, low = _split(nodes, s.vm_priority)
        return am.Pool(
            identity=am.BatchPoolIdentity(
                type="UserAssigned", user_assigned_identities={s.managed_identity_id or "": am.UserAssignedIdentities()}
            ),
            properties=am.PoolProperties(
                vm_size=s.vm_size,
                deployment_configuration=am.DeploymentConfiguration(
                    virtual_machine_configuration=am.VirtualMachineConfiguration(
                        image_reference=am.ImageReference(
                            publisher=s.image_publisher, offer=s.image_offer, sku=s.image_sku, version=s.image_version
                        ),
                        node_agent_sku_id=s.node_agent_sku_id,
                    )
                ),
                scale_settings=am.ScaleSettings(
                    fixed_scale=am.FixedScaleSettings(target_dedicated_nodes=dedicated, target_low_priority_nodes=low)
                ),
                task_slots_per_node=1,
                start_task=am.StartTask(
                    command_line=install_command(),
                    environment_settings=[
                        am.EnvironmentSetting(name="WORKPOOL_NODE_PACKAGE", value=package_source(s, redacted))
                    ],
                    user_identity=am.UserIdentity(
                        auto_user=am.AutoUserSpecification(scope="Pool", elevation_level="Admin")
                    ),
                    wait_for_success=True,
                    max_task_retry_count=2,
                ),
            ),
        )

    # --- job and tasks --------------------------------------------------------------------
    def _get_job(self, made: Made | None = None) -> Any:
        with cluster_errors(f"reading Azure Batch job {self._job}", self.settings, made):
            try:
                return self._client().get_job(self._job)
            except ResourceNotFoundError:
                return None

    def _ensure_job(self, made: Made) -> None:
        s = self.settings
        what = f"creating Azure Batch job {self._job} on pool {self._pool}"
        job = self._get_job(made)
        if job is not None and text_of(job.state) == "active":
            return
        if job is not None:
            # A job ended by `teardown` cannot take new tasks: delete it and start afresh.
            log.info("job %s is %s: deleting it before a new launch", self._job, text_of(job.state))
            with cluster_errors(f"deleting finished Azure Batch job {self._job}", s, made):
                self._client().begin_delete_job(self._job, polling_interval=_seconds(s)).result()
        with cluster_errors(what, s, made):
            try:
                self._client().create_job(self._job_body())
            except ResourceExistsError:
                return  # created meanwhile by another launch: use it
        made.add(f"job {self._job}")

    def _job_body(self, redacted: bool = False) -> Any:
        env = node_environment(self.settings, identity=bool(self.settings.managed_identity_id))
        settings = [bm.EnvironmentSetting(name=k, value=v) for k, v in env.plain.items()]
        settings += [bm.EnvironmentSetting(name=k, value=REDACTED if redacted else v) for k, v in env.secret.items()]
        return bm.BatchJobCreateOptions(
            id=self._job,
            pool_info=bm.BatchPoolInfo(pool_id=self._pool),
            common_environment_settings=settings,
            # Consumers never finish on their own unless idle_exit_s is set; keep the job open
            # so `scale` can add tasks to it.
            all_tasks_complete_mode="noaction",
        )

    def _task_body(self, task_id: str) -> Any:
        return bm.BatchTaskCreateOptions(
            id=task_id,
            command_line=consumer_command(self.settings, task_id),
            constraints=bm.BatchTaskConstraints(max_task_retry_count=TASK_RETRIES),
        )

    def _tasks(self) -> list[Any]:
        with cluster_errors(f"listing tasks of Azure Batch job {self._job}", self.settings):
            try:
                tasks = list(self._client().list_tasks(self._job))
            except ResourceNotFoundError:
                return []
        numbered = [(n, t) for t in tasks if (n := consumer_index(t.id)) is not None]
        return [t for _, t in sorted(numbered, key=lambda pair: pair[0])]

    def _converge_tasks(self, nodes: int, made: Made) -> None:
        """Add or terminate consumer tasks so that `nodes` of them are active or running."""
        s = self.settings
        tasks = self._tasks()
        active = [t for t in tasks if text_of(t.state) in ACTIVE_TASK_STATES]
        for task in reversed(active[nodes:]):  # newest first: they have done the least work
            with cluster_errors(f"terminating Azure Batch task {task.id}", s, made):
                self._client().terminate_task(self._job, task.id)
            made.add(f"terminated task {task.id}")
        missing = max(0, nodes - len(active))
        if not missing:
            return
        first = max((consumer_index(t.id) or 0 for t in tasks), default=0) + 1
        ids = [consumer_name(i) for i in range(first, first + missing)]
        what = f"adding {len(ids)} consumer tasks to Azure Batch job {self._job}"
        with cluster_errors(what, s, made):
            result = self._client().create_tasks(self._job, [self._task_body(i) for i in ids])
        failed = [r for r in result.result_values or [] if text_of(r.status) != "success"]
        added = len(ids) - len(failed)
        if added:
            made.add(f"{added} consumer tasks ({ids[0]}…)")
        if failed:
            reasons = "; ".join(
                f"{r.task_id}: {getattr(r.error, 'code', None) or r.status}"
                + (f" {r.error.message.value}" if r.error is not None and r.error.message is not None else "")
                for r in failed[:5]
            )
            raise WorkpoolError(f"{what}: {len(failed)} tasks were refused ({reasons}); {made.note()}")

    # --- plumbing -------------------------------------------------------------------------
    def _require(self) -> None:
        require(self.settings, "azure-batch", "batch_account_url", "pool")

    def _warn_about_keys(self) -> None:
        s = self.settings
        if s.managed_identity_id:
            return
        if s.connection_string is not None or s.sas_token is not None:
            log.warning(
                "no managed identity (%s): the storage %s travels to the nodes in the job's environment, "
                "readable by anyone who can read this Batch account's jobs; prefer a user-assigned identity",
                env_name("managed_identity_id"),
                "connection string" if s.connection_string is not None else "SAS token",
            )
        elif s.account_url is not None:
            log.warning(
                "nodes will sign in to %s with DefaultAzureCredential but the pool has no managed identity "
                "(%s): their consumers will fail to authenticate",
                s.account_url,
                env_name("managed_identity_id"),
            )

    def _account_name(self) -> str:
        s = self.settings
        if s.batch_account_name:
            return s.batch_account_name
        host = urlparse(s.batch_account_url or "").hostname or ""
        name = host.split(".", 1)[0]
        if not name or host.replace(".", "").isdigit() or host == "localhost":
            raise SettingsError(f"set {env_name('batch_account_name')}: it cannot be read from {s.batch_account_url}")
        return name

    def _arm_pool_path(self) -> str:
        s = self.settings
        return (
            f"/subscriptions/{s.subscription_id}/resourceGroups/{s.resource_group}/providers/Microsoft.Batch"
            f"/batchAccounts/{self._account_name()}/pools/{self._pool}"
        )

    @staticmethod
    def _batch_path(path: str) -> str:
        return f"{path}?api-version={BATCH_API_VERSION}"

    def _client(self) -> BatchClient:
        if self._batch is None:
            s = self.settings
            url = s.batch_account_url or ""
            if s.batch_account_key is not None:
                key = AzureNamedKeyCredential(self._account_name(), s.batch_account_key.get_secret_value())
                self._batch = BatchClient(url, key, retry_total=2, retry_backoff_factor=0.5)
            else:
                credential = self._credential if self._credential is not None else default_credential()
                scope = "https://batch.core.windows.net//.default"
                self._batch = BatchClient(
                    url,
                    credential,
                    authentication_policy=bearer_policy(credential, scope),
                    retry_total=2,
                    retry_backoff_factor=0.5,
                )
        return self._batch


def _check_nodes(nodes: int, allow_zero: bool = False) -> None:
    if nodes < (0 if allow_zero else 1):
        raise UsageError(f"--nodes must be {'0 or more' if allow_zero else 'at least 1'}, got {nodes}")


def _seconds(settings: Settings) -> int:
    """The SDK's poll interval (whole seconds) from WORKPOOL_CLUSTER_POLL_INTERVAL_S."""
    return math.ceil(settings.cluster_poll_interval_s)


def _split(nodes: int, priority: str) -> tuple[int, int]:
    """(dedicated, low-priority) target counts for the configured VM priority."""
    return (0, nodes) if priority == "lowpriority" else (nodes, 0)


def _target_of(pool: Any) -> int:
    return int(pool.target_dedicated_nodes or 0) + int(pool.target_low_priority_nodes or 0)


def _node_detail(node: Any) -> str:
    parts = ["dedicated" if node.is_dedicated else "low-priority"]
    for task in node.recent_tasks or []:
        if text_of(task.task_state) == "running":
            parts.append(f"running {task.task_id}")
    for error in node.errors or []:
        parts.append(f"{error.code}: {error.message}")
    start = node.start_task_info
    if start is not None and text_of(start.state) != "completed":
        parts.append(f"start task {text_of(start.state)}")
    return ", ".join(parts)
