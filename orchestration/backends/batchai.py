"""Batch AI launcher (`--backend batchai`): a GPU cluster and one single-node job per node.

Azure Batch AI was retired in 2019; this backend is kept because it was asked for and drives
the real management SDK (azure-mgmt-batchai 7.0.0, api-version 2018-05-01). Its successors are
Azure Machine Learning compute (`--backend aml`) and Azure Batch (`--backend azure-batch`, see
docs/azure.md); `launch` and `--dry-run` say so (RETIRED).

Shape: workspace → experiment → cluster (manual scale to N, a node setup task that installs
the project) → N jobs with `nodeCount` 1 each running `consumer run`. One job per node means a
lost or preempted node costs one job, not the run: its leased batches come back to the queue
when their visibility timeout passes, and the other jobs carry on.

Queue and storage settings travel as job environment variables; a SAS token or connection
string travels only as a secret environment variable (`EnvironmentVariableWithSecretValue`),
which Batch AI never returns in API responses, and never on a command line.
"""

from __future__ import annotations

import logging
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.batchai import BatchAI
from azure.mgmt.batchai import models as m
from msrest import Serializer

from orchestration.backends.cluster_common import (
    Made,
    arm_client_options,
    cluster_errors,
    consumer_command,
    consumer_index,
    consumer_name,
    default_credential,
    install_command,
    require,
    require_azure_storage,
    text_of,
)
from orchestration.launcher import ClusterState, Launcher, NodeInfo, PlannedRequest
from workpool.errors import NotFoundError, SettingsError, WorkpoolError
from workpool.handoff import node_environment
from workpool.logs import REDACTED
from workpool.settings import Settings

log = logging.getLogger(__name__)

API_VERSION = "2018-05-01"
RETIRED = (
    "Azure Batch AI is retired (its API no longer answers on Azure); this backend is the card's recorded path. "
    "Its successor is Azure Machine Learning compute: use `--backend aml` (docs/azure.md)"
)
# Job execution states in which the job holds (or will hold) a node.
ACTIVE_JOB_STATES = {"queued", "running"}
_serializer: Any = Serializer({k: v for k, v in m.__dict__.items() if isinstance(v, type)})  # type: ignore[no-untyped-call]


class BatchAILauncher(Launcher):
    name = "batchai"
    min_launch_nodes = 1  # node counts are checked by the seam (orchestration/launcher.py)

    def __init__(self, settings: Settings, credential: Any = None) -> None:
        self.settings = settings
        self._credential = credential
        self._client_instance: BatchAI | None = None
        # Checked by _require() before any request; empty strings until then.
        self._subscription = settings.subscription_id or ""
        self._group = settings.resource_group or ""
        self._workspace = settings.workspace or ""
        self._cluster = settings.cluster or ""

    # --- the Launcher interface -----------------------------------------------------------
    def _launch(self, nodes: int) -> None:
        log.warning(RETIRED)
        self._require()
        require_azure_storage(self.settings, "batchai")
        made = Made(self.name)
        self._ensure_workspace(made)
        self._ensure_experiment(made)
        self._ensure_cluster(nodes, made)
        self._converge_jobs(nodes, made)

    def _scale(self, nodes: int) -> None:
        self._require()
        made = Made(self.name)
        cluster = self._get_cluster()
        if cluster is None:
            raise NotFoundError(
                f"Batch AI cluster {self.settings.cluster} does not exist: run `orchestration launch` first"
            )
        if nodes > self._target_of(cluster):
            self._set_target(nodes, made)
            self._converge_jobs(nodes, made)
        else:
            # Stop the jobs first so the cluster gives back nodes that no longer run one.
            self._converge_jobs(nodes, made)
            self._set_target(nodes, made)

    def state(self) -> ClusterState:
        self._require()
        s = self.settings
        cluster = self._get_cluster()
        if cluster is None:
            return ClusterState(self.name, 0, [], f"cluster {s.cluster} does not exist")
        counts = cluster.node_state_counts
        detail = (
            f"cluster {s.cluster}: provisioning {text_of(cluster.provisioning_state)}, "
            f"allocation {text_of(cluster.allocation_state)}, "
            f"{cluster.current_node_count or 0} nodes"
        )
        if counts is not None:
            detail += (
                f" (idle {counts.idle_node_count or 0}, running {counts.running_node_count or 0}, "
                f"preparing {counts.preparing_node_count or 0}, leaving {counts.leaving_node_count or 0}, "
                f"unusable {counts.unusable_node_count or 0})"
            )
        nodes = [NodeInfo(job.name, text_of(job.execution_state), _job_detail(job)) for job in self._jobs()]
        return ClusterState(self.name, self._target_of(cluster), nodes, detail)

    def _teardown(self, delete: bool) -> None:
        self._require()
        s = self.settings
        made = Made(self.name)
        for job in self._jobs():
            if text_of(job.execution_state) in ACTIVE_JOB_STATES:
                self._terminate(job.name, made)
        if self._get_cluster() is None:
            log.info("cluster %s does not exist: nothing to scale down", s.cluster)
            return
        if delete:
            with cluster_errors(f"deleting Batch AI cluster {s.cluster}", s, made):
                self._client().clusters.begin_delete(self._group, self._workspace, self._cluster).result()
            made.add(f"deleted cluster {s.cluster}")
        else:
            self._set_target(0, made)

    def _describe(self, nodes: int) -> list[PlannedRequest]:
        self._require()
        s = self.settings
        plan = [
            PlannedRequest(
                "PUT",
                self._path(),
                _serializer.body(
                    m.WorkspaceCreateParameters(location=s.location or "<location>"), "WorkspaceCreateParameters"
                ),
                "if the workspace does not exist",
            ),
            PlannedRequest("PUT", self._path("experiments", s.experiment), None, "if the experiment does not exist"),
            PlannedRequest(
                "PUT",
                self._path("clusters", self._cluster),
                _serializer.body(self._cluster_parameters(nodes, redacted=True), "ClusterCreateParameters"),
                "or PATCH its scaleSettings if the cluster exists",
            ),
        ]
        for index in range(1, nodes + 1):
            name = consumer_name(index)
            plan.append(
                PlannedRequest(
                    "PUT",
                    self._path("experiments", s.experiment, "jobs", name),
                    _serializer.body(self._job_parameters(name, redacted=True), "JobCreateParameters"),
                    "one single-node consumer job per node",
                )
            )
        log.warning(RETIRED)
        first = plan[0]
        plan[0] = PlannedRequest(first.method, first.path, first.body, f"{RETIRED}; {first.note}".rstrip("; "))
        return plan

    # --- resources ------------------------------------------------------------------------
    def _ensure_workspace(self, made: Made) -> None:
        s = self.settings
        what = f"creating Batch AI workspace {s.workspace}"
        with cluster_errors(f"reading Batch AI workspace {s.workspace}", s, made):
            try:
                self._client().workspaces.get(self._group, self._workspace)
                return
            except ResourceNotFoundError:
                pass
        if not s.location:
            raise SettingsError(f"workspace {s.workspace} does not exist; to create it, set WORKPOOL_LOCATION")
        with cluster_errors(what, s, made):
            poller = self._client().workspaces.begin_create(
                self._group, self._workspace, m.WorkspaceCreateParameters(location=s.location)
            )
            _check_provisioned(poller.result(), what, made)
        made.add(f"workspace {s.workspace}")

    def _ensure_experiment(self, made: Made) -> None:
        s = self.settings
        what = f"creating Batch AI experiment {s.experiment}"
        with cluster_errors(f"reading Batch AI experiment {s.experiment}", s, made):
            try:
                self._client().experiments.get(self._group, self._workspace, s.experiment)
                return
            except ResourceNotFoundError:
                pass
        with cluster_errors(what, s, made):
            poller = self._client().experiments.begin_create(self._group, self._workspace, s.experiment)
            _check_provisioned(poller.result(), what, made)
        made.add(f"experiment {s.experiment}")

    def _ensure_cluster(self, nodes: int, made: Made) -> None:
        s = self.settings
        cluster = self._get_cluster(made)
        if cluster is not None:
            if self._target_of(cluster) != nodes:
                self._set_target(nodes, made)
            return
        what = f"creating Batch AI cluster {s.cluster} ({nodes} × {s.vm_size}, {s.vm_priority})"
        with cluster_errors(what, s, made):
            poller = self._client().clusters.begin_create(
                self._group, self._workspace, self._cluster, self._cluster_parameters(nodes)
            )
            _check_provisioned(poller.result(), what, made)
        made.add(f"cluster {s.cluster} with {nodes} nodes")

    def _get_cluster(self, made: Made | None = None) -> Any:
        s = self.settings
        with cluster_errors(f"reading Batch AI cluster {s.cluster}", s, made):
            try:
                return self._client().clusters.get(self._group, self._workspace, self._cluster)
            except ResourceNotFoundError:
                return None

    def _set_target(self, nodes: int, made: Made) -> None:
        s = self.settings
        parameters = m.ClusterUpdateParameters(scale_settings=_scale_settings(nodes))
        with cluster_errors(f"resizing Batch AI cluster {s.cluster} to {nodes} nodes", s, made):
            self._client().clusters.update(self._group, self._workspace, self._cluster, parameters)
        made.add(f"cluster {s.cluster} target set to {nodes} nodes")

    @staticmethod
    def _target_of(cluster: Any) -> int:
        manual = cluster.scale_settings.manual if cluster.scale_settings is not None else None
        return int(manual.target_node_count) if manual is not None else int(cluster.current_node_count or 0)

    def _jobs(self) -> list[Any]:
        s = self.settings
        with cluster_errors(f"listing jobs of Batch AI experiment {s.experiment}", s):
            try:
                jobs: list[Any] = list(
                    self._client().jobs.list_by_experiment(self._group, self._workspace, s.experiment)
                )
            except ResourceNotFoundError:
                return []
        numbered = [(n, j) for j in jobs if (n := consumer_index(j.name)) is not None]
        return [j for _, j in sorted(numbered, key=lambda pair: pair[0])]

    def _converge_jobs(self, nodes: int, made: Made) -> None:
        """Submit or terminate consumer jobs so that `nodes` of them are queued or running."""
        jobs = self._jobs()
        active = [j for j in jobs if text_of(j.execution_state) in ACTIVE_JOB_STATES]
        # Newest first: the jobs started last have done the least work.
        for job in reversed(active[nodes:]):
            self._terminate(job.name, made)
        next_index = max((consumer_index(j.name) or 0 for j in jobs), default=0) + 1
        for index in range(next_index, next_index + max(0, nodes - len(active))):
            self._submit(consumer_name(index), made)

    def _submit(self, name: str, made: Made) -> None:
        s = self.settings
        what = f"submitting Batch AI job {name}"
        with cluster_errors(what, s, made):
            poller = self._client().jobs.begin_create(
                self._group, self._workspace, s.experiment, name, self._job_parameters(name)
            )
            _check_provisioned(poller.result(), what, made)
        made.add(f"job {name}")

    def _terminate(self, name: str, made: Made) -> None:
        s = self.settings
        with cluster_errors(f"terminating Batch AI job {name}", s, made):
            self._client().jobs.begin_terminate(self._group, self._workspace, s.experiment, name).result()
        made.add(f"terminated job {name}")

    # --- request bodies -------------------------------------------------------------------
    def _cluster_parameters(self, nodes: int, redacted: bool = False) -> Any:
        s = self.settings
        package = s.node_package or ""
        package_env = _env_list({"WORKPOOL_NODE_PACKAGE": package}, secret=False)
        setup = m.SetupTask(
            command_line=install_command(),
            std_out_err_path_prefix=s.batchai_log_path,
            # A wheel URL can carry a SAS token: such a package source travels as a secret.
            environment_variables=None if "?" in package else package_env,
            secrets=_env_list({"WORKPOOL_NODE_PACKAGE": package}, secret=True, redacted=redacted)
            if "?" in package
            else None,
        )
        image = m.ImageReference(
            publisher=s.image_publisher,
            offer=s.image_offer,
            sku=s.image_sku,
            version=None if s.image_version == "latest" else s.image_version,
        )
        return m.ClusterCreateParameters(
            vm_size=s.vm_size,
            vm_priority="dedicated" if s.vm_priority == "dedicated" else "lowpriority",  # Batch AI's name for spot
            scale_settings=_scale_settings(nodes),
            virtual_machine_configuration=m.VirtualMachineConfiguration(image_reference=image),
            node_setup=m.NodeSetup(setup_task=setup),
            user_account_settings=m.UserAccountSettings(
                admin_user_name=s.batchai_admin_user, admin_user_ssh_public_key=s.batchai_ssh_public_key
            ),
        )

    def _job_parameters(self, name: str, redacted: bool = False) -> Any:
        s = self.settings
        env = node_environment(s)
        return m.JobCreateParameters(
            cluster=m.ResourceId(id=self._cluster_id()),
            node_count=1,
            custom_toolkit_settings=m.CustomToolkitSettings(command_line=consumer_command(s, name)),
            std_out_err_path_prefix=s.batchai_log_path,
            environment_variables=_env_list(env.plain, secret=False) or None,
            secrets=_env_list(env.secret, secret=True, redacted=redacted) or None,
        )

    # --- plumbing -------------------------------------------------------------------------
    def _require(self) -> None:
        # Batch AI nodes install WORKPOOL_NODE_PACKAGE (a pinned wheel URL you host): there is no default.
        fields = ("subscription_id", "resource_group", "workspace", "cluster", "vm_size", "node_package")
        require(self.settings, "batchai", *fields)

    def _path(self, *parts: str) -> str:
        s = self.settings
        base = (
            f"/subscriptions/{s.subscription_id}/resourceGroups/{s.resource_group}"
            f"/providers/Microsoft.BatchAI/workspaces/{s.workspace}"
        )
        return "/".join([base, *parts]) + f"?api-version={API_VERSION}"

    def _cluster_id(self) -> str:
        return self._path("clusters", self._cluster).split("?", 1)[0]

    def _client(self) -> BatchAI:
        if self._client_instance is None:
            s = self.settings
            credential = self._credential if self._credential is not None else default_credential()
            self._client_instance = BatchAI(
                credential, self._subscription, base_url=s.arm_endpoint, **arm_client_options(s, credential)
            )
        return self._client_instance


def _scale_settings(nodes: int) -> Any:
    # waitforjobcompletion: a shrinking cluster gives back only nodes whose job has ended (we
    # terminate the surplus jobs first), so a running consumer is never cut off by a resize.
    return m.ScaleSettings(
        manual=m.ManualScaleSettings(target_node_count=nodes, node_deallocation_option="waitforjobcompletion")
    )


def _env_list(values: dict[str, str], secret: bool, redacted: bool = False) -> list[Any]:
    if secret:
        return [
            m.EnvironmentVariableWithSecretValue(name=k, value=REDACTED if redacted else v) for k, v in values.items()
        ]
    return [m.EnvironmentVariable(name=k, value=v) for k, v in values.items()]


def _check_provisioned(resource: Any, what: str, made: Made) -> None:
    """The SDK hands back a resource whose provisioning failed without raising: raise here."""
    state = text_of(getattr(resource, "provisioning_state", "")).lower()
    if state == "failed":
        errors = getattr(resource, "errors", None) or []
        reasons = "; ".join(f"{e.code}: {e.message}" for e in errors) or "no reason given"
        raise WorkpoolError(
            f"{what} failed: provisioning state Failed ({reasons}); the resource is left in the Failed state; "
            + made.note()
        )


def _job_detail(job: Any) -> str:
    info = job.execution_info
    if info is None:
        return ""
    parts = []
    if info.exit_code is not None:
        parts.append(f"exit code {info.exit_code}")
    parts.extend(f"{e.code}" + (f": {e.message}" if e.message else "") for e in info.errors or [])
    return ", ".join(parts)
