"""Azure Batch request bodies: pure functions of the settings (and of the files `launch` uploaded).

What `launch` sends and what `launch --dry-run` prints are the same bodies, built here; the
launcher (orchestration/backends/azure_batch.py) only decides when to send which. Nothing here
reads the network, the clock or the environment.

- the pool (Batch data plane, or through ARM when it gets a managed identity), its start task
  with the resource files and their sha256 checks, its container image and registry;
- the job, whose common environment carries the queue and storage settings;
- the consumer tasks (`consumer run`, one per node).

Azure documentation these bodies follow (docs/azure.md cites them with what each one decided):
- container tasks on GPU pools get their GPUs from Batch: no `--gpus` in the run options
  (learn.microsoft.com/azure/batch/batch-docker-container-workloads);
- a Batch account in user-subscription mode takes Microsoft Entra ID only, no shared key
  (learn.microsoft.com/rest/api/batchmanagement/batch-account/create, poolAllocationMode).
"""

from __future__ import annotations

import shlex
from typing import Any
from urllib.parse import urlparse

from azure.batch import models as bm

from orchestration.backends.cluster_common import NODE_VENV
from orchestration.backends.vm_sizes import is_spot
from orchestration.node import BOOTSTRAP_FILE
from orchestration.wheel import NodeFiles, ShippedFile
from workpool.errors import SettingsError
from workpool.handoff import node_environment
from workpool.logs import REDACTED
from workpool.settings import Settings, env_name

BATCH_API_VERSION = "2025-06-01"
ARM_BATCH_API_VERSION = "2025-06-01"  # azure-mgmt-batch 19
TASKS_PER_REQUEST = 100  # the task-collection API takes at most 100 tasks per request
TASK_RETRIES = 3  # a consumer that crashes is restarted this often before its task fails
START_TASK_RETRIES = 2
# Where the bootstrap puts the virtualenv on a start-task pool (read by the consumer tasks).
NODE_SHARED_VENV = "$AZ_BATCH_NODE_SHARED_DIR/workpool/venv"
# A container pool's OS disk when WORKPOOL_NODE_OS_DISK_GB is unset: Docker keeps its images under
# /var/lib/docker on the OS disk, and a TensorFlow GPU image takes 10-20 GB unpacked, more than the
# few GB an ubuntu-hpc OS disk has free at its default size.
CONTAINER_OS_DISK_GB = 128
# What a dry run shows for the sha256 of a wheel not built yet (launch builds it and puts its hash there).
UNBUILT_SHA256 = "<sha256-of-the-wheel-launch-builds>"


# --- naming and placement -------------------------------------------------------------------
def container_image(settings: Settings) -> str:
    """WORKPOOL_NODE_IMAGE, trimmed; empty for a start-task pool."""
    return (settings.node_image or "").strip()


def registry_server(image: str) -> str | None:
    """The registry host of `registry/image:tag` (None for a Docker Hub name)."""
    first = image.split("/", 1)[0] if "/" in image else ""
    return first if ("." in first or ":" in first or first == "localhost") else None


def split(settings: Settings, nodes: int) -> tuple[int, int]:
    """(dedicated, spot) target counts: Spot nodes are Batch's `targetLowPriorityNodes`."""
    return (0, nodes) if is_spot(settings) else (nodes, 0)


def account_name(settings: Settings) -> str:
    """The Batch account's name: WORKPOOL_BATCH_ACCOUNT_NAME, else the first label of the account URL."""
    if settings.batch_account_name:
        return settings.batch_account_name
    host = urlparse(settings.batch_account_url or "").hostname or ""
    name = host.split(".", 1)[0]
    if not name or host.replace(".", "").isdigit() or host == "localhost":
        raise SettingsError(
            f"set {env_name('batch_account_name')}: it cannot be read from {settings.batch_account_url}"
        )
    return name


def arm_pool_path(settings: Settings) -> str:
    """The pool's ARM path (subscription and resource group must be set: the launcher checks first)."""
    return (
        f"/subscriptions/{settings.subscription_id}/resourceGroups/{settings.resource_group}"
        f"/providers/Microsoft.Batch/batchAccounts/{account_name(settings)}/pools/{settings.pool}"
    )


def batch_path(path: str) -> str:
    return f"{path}?api-version={BATCH_API_VERSION}"


# --- what a node downloads and runs first -------------------------------------------------------
def files_of(files: NodeFiles) -> list[ShippedFile]:
    """The resource files of the start task: the bootstrap, then the wheel and constraints when shipped."""
    return [f for f in (files.bootstrap, files.wheel, files.constraints) if f is not None]


def bootstrap_command(files: NodeFiles) -> str:
    """The start task: check every downloaded file's sha256, then run the bootstrap.

    The hashes are those of the files `launch` built and uploaded; a file replaced in storage
    afterwards (or cut short) fails the start task with a message naming both hashes, before
    anything of it runs. Resource files land in the start task's working directory.
    """
    pairs = " ".join(shlex.quote(f"{f.sha256 or UNBUILT_SHA256}:{f.file_name}") for f in files_of(files))
    script = (
        'cd "$AZ_BATCH_TASK_WORKING_DIR" || exit 1; '
        f"for pair in {pairs}; do "
        'want="${pair%%:*}"; file="${pair#*:}"; '
        'got="$(sha256sum "$file" 2>/dev/null | cut -d " " -f 1)"; '
        'if [ "$got" != "$want" ]; then '
        'echo "workpool-start: FAILED: $file has sha256 ${got:-(none: not downloaded)}, expected sha256 $want '
        '(the file launch uploaded was replaced or damaged): refusing to run it" >&2; exit 1; '
        "fi; done; "
        f'exec /bin/bash "$AZ_BATCH_TASK_WORKING_DIR/{BOOTSTRAP_FILE}"'
    )
    return f"/bin/bash -c {shlex.quote(script)}"


def shown_url(file: ShippedFile, redacted: bool, identity: bool) -> str:
    """The URL a node downloads: with its SAS (masked for dry runs: made at launch), or bare with an identity."""
    if identity:
        return file.url
    if redacted or file.query is None:
        return f"{file.url}?{REDACTED}"
    return file.download_url


def package_shown(package: str, redacted: bool) -> str:
    """WORKPOOL_NODE_PACKAGE, with a URL's query (a SAS token) masked for dry runs and logs."""
    if redacted and "?" in package:
        return package.split("?", 1)[0] + "?" + REDACTED
    return package


def start_env(settings: Settings, files: NodeFiles, redacted: bool = False) -> dict[str, str]:
    """The start task's environment: what the bootstrap installs, and the accelerator check's inputs."""
    s = settings
    env = {"WORKPOOL_NODE_EXTRAS": s.node_extras}
    if s.node_package is not None:
        env[env_name("node_package")] = package_shown(s.node_package, redacted)
    elif files.wheel is not None:
        env["WORKPOOL_NODE_WHEEL"] = files.wheel.file_name
    if files.constraints is not None:
        env["WORKPOOL_NODE_CONSTRAINTS"] = files.constraints.file_name
    if s.vm_size:
        env[env_name("vm_size")] = s.vm_size  # a GPU size with no visible GPU fails the check
    if s.allow_cpu:
        env[env_name("allow_cpu")] = "true"
    return env


def resource_file(settings: Settings, file: ShippedFile, redacted: bool = False) -> Any:
    identity = settings.managed_identity_id
    return bm.ResourceFile(
        http_url=shown_url(file, redacted, identity is not None),
        file_path=file.file_name,
        identity_reference=bm.BatchNodeIdentityReference(resource_id=identity) if identity else None,
    )


def start_task(settings: Settings, files: NodeFiles, redacted: bool = False) -> Any:
    return bm.BatchStartTask(
        command_line=bootstrap_command(files),
        resource_files=[resource_file(settings, f, redacted) for f in files_of(files)],
        environment_settings=[
            bm.EnvironmentSetting(name=k, value=v) for k, v in start_env(settings, files, redacted).items()
        ],
        # The bootstrap may apt-get a Python; the consumer tasks run as the non-admin default user.
        user_identity=bm.UserIdentity(auto_user=bm.AutoUserSpecification(scope="pool", elevation_level="admin")),
        wait_for_success=True,
        max_task_retry_count=START_TASK_RETRIES,
    )


def os_disk_gb(settings: Settings) -> int | None:
    """The nodes' OS disk size: the setting, else CONTAINER_OS_DISK_GB for a container pool, else the image's."""
    if settings.node_os_disk_gb is not None:
        return settings.node_os_disk_gb
    return CONTAINER_OS_DISK_GB if container_image(settings) else None


# --- the pool ---------------------------------------------------------------------------------
def registry(settings: Settings) -> Any:
    """The image's private registry, read with the pool's identity (AcrPull); None otherwise."""
    server = registry_server(container_image(settings))
    identity = settings.managed_identity_id
    if server is None or identity is None:
        return None
    return bm.ContainerRegistryReference(
        registry_server=server, identity_reference=bm.BatchNodeIdentityReference(resource_id=identity)
    )


def pool_body(settings: Settings, nodes: int, files: NodeFiles | None, redacted: bool = False) -> Any:
    """The data-plane pool (POST /pools): no managed identity."""
    s = settings
    dedicated, spot = split(s, nodes)
    image = container_image(s)
    reg = registry(s)
    disk = os_disk_gb(s)
    return bm.BatchPoolCreateOptions(
        id=s.pool or "",
        vm_size=s.vm_size or "",
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(
                publisher=s.image_publisher, offer=s.image_offer, sku=s.image_sku, version=s.image_version
            ),
            node_agent_sku_id=s.node_agent_sku_id,
            container_configuration=bm.BatchContainerConfiguration(
                type="dockerCompatible",
                container_image_names=[image],
                container_registries=[reg] if reg is not None else None,
            )
            if image
            else None,
            os_disk=bm.BatchOsDisk(disk_size_gb=disk) if disk is not None else None,
        ),
        target_dedicated_nodes=dedicated,
        target_low_priority_nodes=spot,
        task_slots_per_node=1,
        start_task=None if files is None else start_task(s, files, redacted),
    )


def arm_pool_body(settings: Settings, nodes: int, files: NodeFiles | None, redacted: bool = False) -> Any:
    """The pool through ARM (PUT …/pools/<pool>): only ARM can give a pool a user-assigned identity."""
    from azure.mgmt.batch import models as am

    s = settings
    identity = s.managed_identity_id or ""
    dedicated, spot = split(s, nodes)
    image = container_image(s)
    start = None
    if files is not None:
        start = am.StartTask(
            command_line=bootstrap_command(files),
            resource_files=[
                am.ResourceFile(
                    http_url=shown_url(f, redacted, True),
                    file_path=f.file_name,
                    identity_reference=am.ComputeNodeIdentityReference(resource_id=identity),
                )
                for f in files_of(files)
            ],
            environment_settings=[
                am.EnvironmentSetting(name=k, value=v) for k, v in start_env(s, files, redacted).items()
            ],
            user_identity=am.UserIdentity(auto_user=am.AutoUserSpecification(scope="Pool", elevation_level="Admin")),
            wait_for_success=True,
            max_task_retry_count=START_TASK_RETRIES,
        )
    container = None
    if image:
        server = registry_server(image)
        container = am.ContainerConfiguration(
            type="DockerCompatible",
            container_image_names=[image],
            container_registries=[
                am.ContainerRegistry(
                    registry_server=server,
                    identity_reference=am.ComputeNodeIdentityReference(resource_id=identity),
                )
            ]
            if server
            else None,
        )
    disk = os_disk_gb(s)
    return am.Pool(
        identity=am.BatchPoolIdentity(
            type="UserAssigned", user_assigned_identities={identity: am.UserAssignedIdentities()}
        ),
        properties=am.PoolProperties(
            vm_size=s.vm_size,
            deployment_configuration=am.DeploymentConfiguration(
                virtual_machine_configuration=am.VirtualMachineConfiguration(
                    image_reference=am.ImageReference(
                        publisher=s.image_publisher, offer=s.image_offer, sku=s.image_sku, version=s.image_version
                    ),
                    node_agent_sku_id=s.node_agent_sku_id,
                    container_configuration=container,
                    os_disk=am.OSDisk(disk_size_gb=disk) if disk is not None else None,
                )
            ),
            scale_settings=am.ScaleSettings(
                fixed_scale=am.FixedScaleSettings(target_dedicated_nodes=dedicated, target_low_priority_nodes=spot)
            ),
            task_slots_per_node=1,
            start_task=start,
        ),
    )


# --- the job and its tasks --------------------------------------------------------------------------
def job_body(settings: Settings, redacted: bool = False) -> Any:
    """The job: its common environment reaches every consumer task (secrets masked when `redacted`)."""
    s = settings
    env = node_environment(s, identity=bool(s.managed_identity_id))
    plain = dict(env.plain)
    if s.vm_size:
        plain.setdefault(env_name("vm_size"), s.vm_size)  # `consumer run`'s accelerator check
    values = [bm.EnvironmentSetting(name=k, value=v) for k, v in plain.items()]
    values += [bm.EnvironmentSetting(name=k, value=REDACTED if redacted else v) for k, v in env.secret.items()]
    return bm.BatchJobCreateOptions(
        id=s.batch_job,
        pool_info=bm.BatchPoolInfo(pool_id=s.pool or ""),
        common_environment_settings=values,
        # Consumers never finish on their own unless idle_exit_s is set; keep the job open
        # so `scale` can add tasks to it.
        all_tasks_complete_mode="noaction",
    )


def task_body(settings: Settings, task_id: str) -> Any:
    """One consumer task: `consumer run --workers <node_workers>`, in the container or the shared venv."""
    s = settings
    args = ["run", "--workers", s.node_workers, "--worker-id", task_id]
    image = container_image(s)
    if image:
        return bm.BatchTaskCreateOptions(
            id=task_id,
            command_line=shlex.join([f"{NODE_VENV}/bin/consumer", *args]),
            # No `--gpus all`: on a GPU pool Batch gives container tasks the GPUs itself, and its
            # container docs say not to pass it.
            container_settings=bm.BatchTaskContainerSettings(image_name=image, registry=registry(s)),
            constraints=bm.BatchTaskConstraints(max_task_retry_count=TASK_RETRIES),
        )
    # exec: the consumer itself gets Batch's SIGTERM on terminate and releases its batches.
    script = f'exec "{NODE_SHARED_VENV}/bin/consumer" {shlex.join(args)}'
    return bm.BatchTaskCreateOptions(
        id=task_id,
        command_line=f"/bin/bash -c {shlex.quote(script)}",
        constraints=bm.BatchTaskConstraints(max_task_retry_count=TASK_RETRIES),
    )
