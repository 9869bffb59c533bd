"""What both cluster backends (Batch AI, Azure Batch) share.

- consumer naming (consumer-0001…) and, for Batch AI, the setup task's install line and the
  `consumer run` line (Azure Batch ships a wheel and orchestration/node/bootstrap.sh instead,
  see orchestration/wheel.py); the node environment itself is workpool/handoff.py's;
- Azure credentials and the management-plane client options (sovereign-cloud scopes, plain
  http only for loopback test servers, fast polling);
- turning Azure errors into one clear message naming what failed, plus what was already made.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

from workpool.errors import SettingsError, WorkpoolError
from workpool.logs import redact
from workpool.settings import CONNECTION_STRING_ENV, Settings, env_name, is_loopback

log = logging.getLogger(__name__)

# Where the Batch AI setup task installs the project, and where the container image (Dockerfile)
# has it; the consumer runs from there. (Azure Batch start-task pools: $AZ_BATCH_NODE_SHARED_DIR.)
NODE_VENV = "/opt/workpool/venv"

# Consumer jobs (Batch AI) and tasks (Azure Batch) are named consumer-0001, consumer-0002, …:
# the number orders them, so scaling down stops the newest and scaling up continues the count.
CONSUMER_PREFIX = "consumer-"
_CONSUMER_NAME = re.compile(rf"^{CONSUMER_PREFIX}(\d+)$")


def consumer_name(index: int) -> str:
    return f"{CONSUMER_PREFIX}{index:04d}"


def consumer_index(name: str | None) -> int | None:
    """The number in a consumer job or task name; None for a name that is not one of ours."""
    match = _CONSUMER_NAME.match(name or "")
    return int(match.group(1)) if match else None


def require(settings: Settings, backend: str, *fields: str) -> None:
    """Raise SettingsError (exit 2) naming every missing setting by its variable."""
    missing = [env_name(f) for f in fields if not getattr(settings, f)]
    if missing:
        raise SettingsError(
            f"the {backend} backend needs {', '.join(missing)} (set them in the environment or --config)"
        )


# --- what runs on a node --------------------------------------------------------------------
def install_command() -> str:
    """Shell line for the Batch AI node setup task: a virtualenv with the project in it.

    The package comes from $WORKPOOL_NODE_PACKAGE, never from the command line itself, so a
    wheel URL carrying a SAS token is not shown wherever command lines are (portal, logs).
    """
    script = (
        "set -euo pipefail; "
        f"python3 -m venv {NODE_VENV}; "
        f"{NODE_VENV}/bin/pip install --upgrade pip; "
        f'{NODE_VENV}/bin/pip install "$WORKPOOL_NODE_PACKAGE"'
    )
    return f"/bin/bash -c {shlex.quote(script)}"


def consumer_command(settings: Settings, worker_id: str) -> str:
    """Shell line that runs the consumer: one worker per GPU with `--workers auto`."""
    args = [f"{NODE_VENV}/bin/consumer", "run", "--workers", settings.node_workers, "--worker-id", worker_id]
    return f"/bin/bash -c {shlex.quote(shlex.join(args))}"


def text_of(value: Any) -> str:
    """An SDK enum or string as its wire text ("running"): str() of an enum gives its name."""
    return str(getattr(value, "value", value) or "")


def storage_is_embedded(settings: Settings) -> bool:
    return not settings.uses_azure_storage


def require_azure_storage(settings: Settings, backend: str) -> None:
    """Cluster nodes cannot reach this machine's embedded queue: refuse (exit 2) before sending anything."""
    if storage_is_embedded(settings):
        raise SettingsError(
            f"the {backend} backend needs Azure Storage for the queue and results: set "
            f"{CONNECTION_STRING_ENV}, or {env_name('account_url')} (with {env_name('sas_token')} "
            "or a managed identity); the embedded queue lives on this machine only"
        )


# --- credentials and client options ---------------------------------------------------------
def default_credential() -> Any:
    """Entra ID sign-in: environment, managed identity, Azure CLI (`az login`), …"""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def _loopback_http(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme == "http" and is_loopback(parsed.hostname or "")


class _LoopbackBearerPolicy(BearerTokenCredentialPolicy):  # type: ignore[type-arg]
    """A bearer-token policy that lets the token go over plain http to a loopback test server.

    azure-core refuses bearer tokens on http. Settings already accept http only for loopback
    hosts; this checks the host again on every request before relaxing the rule.
    """

    def on_request(self, request: PipelineRequest[Any]) -> None:
        if _loopback_http(request.http_request.url):
            request.context["enforce_https"] = False
        super().on_request(request)


class _LoopbackArmPolicy(ARMChallengeAuthenticationPolicy):
    """The same, for Resource Manager clients (which answer auth challenges ARM's way)."""

    def on_request(self, request: PipelineRequest[Any]) -> None:
        if _loopback_http(request.http_request.url):
            request.context["enforce_https"] = False
        super().on_request(request)


def bearer_policy(credential: Any, scope: str, arm: bool = False) -> Any:
    """Entra ID authentication for a client: ARM's challenge-aware policy or the plain one."""
    return _LoopbackArmPolicy(credential, scope) if arm else _LoopbackBearerPolicy(credential, scope)


def arm_client_options(settings: Settings, credential: Any) -> dict[str, Any]:
    """Options for ARM clients: the cloud's token scope, loopback http, polling, few retries."""
    scope = settings.arm_endpoint.rstrip("/") + "/.default"
    return {
        "credential_scopes": [scope],
        "authentication_policy": bearer_policy(credential, scope, arm=True),
        "polling_interval": settings.cluster_poll_interval_s,
        "retry_total": 2,
        "retry_backoff_factor": 0.5,
    }


# --- errors and what was made -----------------------------------------------------------------
@dataclass
class Made:
    """What a launch created or changed so far, for an honest error message."""

    backend: str
    items: list[str] = field(default_factory=list)

    def add(self, item: str) -> None:
        self.items.append(item)
        log.info("%s: %s", self.backend, item)

    def note(self) -> str:
        if not self.items:
            return "nothing was created"
        undo = f"`orchestration teardown --backend {self.backend} --delete`"
        return "already made: " + "; ".join(self.items) + f" (remove with {undo})"


def service_error(exc: HttpResponseError) -> str:
    """'409 Conflict: Code: message' from an ARM or Batch error body."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None) or ""
    message = getattr(error, "message", None) or ""
    status = exc.status_code or 0
    reason = exc.reason or ""
    text = f"{status} {reason}".strip()
    if code or message:
        text += f": {code}" + (f": {message}" if message else "")
    return text


@contextmanager
def cluster_errors(what: str, settings: Settings, made: Made | None = None) -> Iterator[None]:
    """Raise WorkpoolError (exit 1) saying what failed, why, and what was already made."""
    secrets = settings.secret_values()

    def fail(reason: str) -> WorkpoolError:
        suffix = f"; {made.note()}" if made is not None else ""
        return WorkpoolError(redact(f"{what} {reason}{suffix}", secrets))

    try:
        yield
    except WorkpoolError as exc:
        if made is not None and made.items and "already made" not in str(exc):
            raise type(exc)(f"{exc}; {made.note()}") from None
        raise
    except ClientAuthenticationError as exc:
        # No status: the credential itself could not get a token (not signed in, no identity).
        reason = service_error(exc) if exc.status_code else str(exc).strip().splitlines()[0]
        raise fail(
            f"failed: authentication failed ({reason}); sign in with `az login` or configure a credential"
        ) from None
    except HttpResponseError as exc:
        raise fail(f"failed: {service_error(exc)}") from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise fail(f"failed: service unreachable ({type(exc).__name__}: {exc})") from None
    except AzureError as exc:
        raise fail(f"failed: {exc}") from None


def refused_tasks(what: str, error: Any, wanted: int, made: Made) -> str:
    """Azure Batch's CreateTasksError in words: each refused task with its code and message, and unknown errors."""
    failures = list(error.failure_tasks or [])
    reasons = []
    for result in failures[:5]:
        err = result.error
        text = getattr(getattr(err, "message", None), "value", None) or ""
        reasons.append(
            f"{result.task_id}: {getattr(err, 'code', None) or text_of(result.status)}" + f" {text}".rstrip()
        )
    for exc in list(error.errors or [])[:3]:
        reasons.append(service_error(exc) if isinstance(exc, HttpResponseError) else f"{type(exc).__name__}: {exc}")
    pending = len(error.pending_tasks or [])
    added = wanted - len(failures) - pending
    note = f"{added} of {wanted} added" + (f", {pending} not sent" if pending else "")
    return f"{what}: {len(failures)} refused ({'; '.join(reasons)}); {note}; {made.note()}"
