"""What the Azure Machine Learning launcher sends, as pure functions of the settings.

The compute (an AmlCompute cluster) and one command job per node, built as `azure-ai-ml` v2
entities, plus their REST bodies for `--dry-run`. Nothing here talks to Azure; the launcher
(orchestration/backends/aml.py) sends them.

- **Compute:** `min_instances` 0 (a cluster with no job costs nothing), `max_instances` the nodes
  asked (grown, never shrunk, by `scale`), `idle_time_before_scale_down` from
  WORKPOOL_AML_IDLE_SCALE_DOWN_S, tier `dedicated` or `low_priority` (WORKPOOL_VM_PRIORITY=spot),
  and the user-assigned managed identity WORKPOOL_MANAGED_IDENTITY_ID.
- **Jobs:** `consumer-0001`, `consumer-0002`, … in the experiment WORKPOOL_EXPERIMENT, each on
  one node (`instance_count` 1), running as that identity (`identity.client_id`): its consumers
  sign in to the queue and the result store with it, so no key or token is in any definition.
  The job's input `wheel` is this checkout's wheel in the result store (uploaded by `launch`,
  orchestration/wheel.py), which AML downloads with the job's identity; the command checks its
  sha256 against the one `launch` computed, installs it into a virtualenv with a Python >= 3.11
  (the image's, else one made with the image's conda), runs the accelerator check
  (consumer/accelerator.py) and then `consumer run --workers auto`.
- **Environment:** WORKPOOL_NODE_IMAGE, else DEFAULT_IMAGE, Microsoft's AzureML GPU base image
  (github.com/Azure/AzureML-Containers, base/gpu/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04:
  Ubuntu 22.04, CUDA 11.8, cuDNN 8, Miniconda with Python 3.8). The wheel's `gpu` extra brings
  TensorFlow's own CUDA 12 libraries, so only the node's NVIDIA driver matters; Python 3.8 is
  too old for the project, hence the conda-made 3.11.
"""

from __future__ import annotations

import json
import logging
import shlex
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from orchestration.backends.vm_sizes import is_spot
from workpool.handoff import node_environment
from workpool.logs import REDACTED
from workpool.settings import Settings, env_name

DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04:latest"
WHEEL_INPUT = "wheel"
WHEEL_NAME_ENV = "WORKPOOL_NODE_WHEEL"
WHEEL_SHA_ENV = "WORKPOOL_NODE_WHEEL_SHA256"
ARM_API_VERSION = "2024-10-01"  # Microsoft.MachineLearningServices computes (what azure-ai-ml 1.35 sends)
JOBS_API_VERSION = "2025-01-01-preview"  # jobs (azure-ai-ml 1.35)


@dataclass(frozen=True)
class Wheel:
    """The wheel a node installs: its file name, its blob URL in the result store, its sha256."""

    file_name: str
    url: str
    sha256: str


def sdk() -> tuple[ModuleType, ModuleType]:
    """azure.ai.ml and its entities, imported quietly: azure-ai-ml 1.35 builds its schemas with
    marshmallow options that marshmallow 4 deprecates (a warning on import, an error under pytest)."""
    # Its notes on experimental schema classes (every import) are noise to a user of this command.
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    # Its telemetry logs every 404 it is asked for (a compute not made yet) as an ERROR.
    logging.getLogger("azure.ai.ml._telemetry").setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import azure.ai.ml as ml
        import azure.ai.ml.entities as entities
    return ml, entities


def tier(settings: Settings) -> str:
    """AmlCompute's tier: Spot nodes are AML's `low_priority` VMs."""
    return "low_priority" if is_spot(settings) else "dedicated"


def image(settings: Settings) -> str:
    return (settings.node_image or "").strip() or DEFAULT_IMAGE


def workspace_path(settings: Settings) -> str:
    return (
        f"/subscriptions/{settings.subscription_id}/resourceGroups/{settings.resource_group}"
        f"/providers/Microsoft.MachineLearningServices/workspaces/{settings.workspace}"
    )


def compute_entity(settings: Settings, max_nodes: int) -> Any:
    _, entities = sdk()
    identity = entities.IdentityConfiguration(
        type="user_assigned",
        user_assigned_identities=[entities.ManagedIdentityConfiguration(resource_id=settings.managed_identity_id)],
    )
    return entities.AmlCompute(
        name=settings.cluster or "",
        size=settings.vm_size,
        tier=tier(settings),
        min_instances=0,
        max_instances=max(1, max_nodes),
        idle_time_before_scale_down=settings.aml_idle_scale_down_s,
        identity=identity,
        description="workpool consumers (orchestration launch --backend aml)",
    )


def node_script(settings: Settings, worker_id: str) -> str:
    """The job's command: check and install the wheel, check the accelerator, run the consumer."""
    extras = settings.node_extras.strip()
    target = f'"$here/$WORKPOOL_NODE_WHEEL{f"[{extras}]" if extras else ""}"'
    check = "-m consumer.accelerator" + (" --allow-cpu" if settings.allow_cpu else "")
    consumer = shlex.join(["run", "--workers", settings.node_workers, "--worker-id", worker_id])
    return "\n".join(
        [
            "set -euo pipefail",
            'say() { printf "workpool-node: %s\\n" "$*" >&2; }',
            'here="$PWD/workpool"; mkdir -p "$here"',
            f'cp "${{{{inputs.{WHEEL_INPUT}}}}}" "$here/$WORKPOOL_NODE_WHEEL"',
            f'echo "${WHEEL_SHA_ENV}  $here/$WORKPOOL_NODE_WHEEL" | sha256sum -c --status - '
            '|| { say "FAILED: the wheel is not the one launch uploaded (sha256 differs)"; exit 1; }',
            'py=""; for c in python3.13 python3.12 python3.11 python3; do command -v "$c" >/dev/null && '
            "\"$c\" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null "
            '&& { py="$(command -v "$c")"; break; }; done',
            'if [ -z "$py" ]; then say "no Python >= 3.11: making one with conda"; '
            'conda create -y -q -p "$here/python" python=3.11 >&2 || { say "FAILED: conda could not make a '
            'Python 3.11"; exit 1; }; py="$here/python/bin/python"; fi',
            '[ -x "$here/venv/bin/consumer" ] || { "$py" -m venv "$here/venv" && '
            f'"$here/venv/bin/python" -m pip install --no-input --progress-bar off {target} >&2; }} '
            '|| { say "FAILED: pip could not install $WORKPOOL_NODE_WHEEL"; exit 1; }',
            f'"$here/venv/bin/python" {check} || {{ say "FAILED: accelerator check (see the line above)"; exit 1; }}',
            f'exec "$here/venv/bin/consumer" {consumer}',
        ]
    )


def job_environment(settings: Settings, wheel: Wheel) -> dict[str, str]:
    """What every consumer job gets: the queue and storage settings (no secret: identity), the wheel's name and hash."""
    env = node_environment(settings, identity=True)
    values = dict(env.plain)  # env.secret is empty: with an identity no key or token travels
    values[WHEEL_NAME_ENV] = wheel.file_name
    values[WHEEL_SHA_ENV] = wheel.sha256
    values[env_name("vm_size")] = settings.vm_size or ""
    if settings.allow_cpu:
        values[env_name("allow_cpu")] = "true"
    return values


def job_entity(settings: Settings, worker_id: str, wheel: Wheel) -> Any:
    ml, entities = sdk()
    identity = (
        entities.ManagedIdentityConfiguration(client_id=settings.managed_identity_client_id)
        if settings.managed_identity_client_id
        else entities.ManagedIdentityConfiguration(resource_id=settings.managed_identity_id)
    )
    return ml.command(
        name=worker_id,
        display_name=worker_id,
        experiment_name=settings.experiment,
        description="workpool consumer: one node, one worker per GPU",
        command=node_script(settings, worker_id),
        inputs={WHEEL_INPUT: ml.Input(type="uri_file", path=wheel.url, mode="download")},
        environment=entities.Environment(image=image(settings)),
        environment_variables=job_environment(settings, wheel),
        compute=settings.cluster,
        instance_count=1,
        identity=identity,
        tags={"workpool-queue": settings.queue},
    )


def compute_body(settings: Settings, max_nodes: int) -> dict[str, Any]:
    """The REST body of the compute PUT (what azure-ai-ml sends), for `--dry-run`."""
    rest = compute_entity(settings, max_nodes)._to_rest_object()
    body: dict[str, Any] = json.loads(json.dumps(rest.as_dict(), default=str))
    return body


def job_body(settings: Settings, worker_id: str, wheel: Wheel) -> dict[str, Any]:
    """The REST body of a job PUT, for `--dry-run`: the environment shown as its image (AML registers it
    as an anonymous environment at submission), every secret-looking value masked."""
    job = job_entity(settings, worker_id, wheel)
    rest = job._to_job()._to_rest_object()
    props = json.loads(json.dumps(rest.as_dict(), default=str)).get("properties", {})
    props.pop("environmentId", None)
    props["environment"] = {"image": image(settings)}
    props["computeId"] = f"{workspace_path(settings)}/computes/{settings.cluster}"
    env = props.get("environmentVariables") or {}
    for key in env:
        if any(word in key.upper() for word in ("KEY", "SAS", "SECRET", "CONNECTION_STRING", "PASSWORD")):
            env[key] = REDACTED
    return {"properties": props}
