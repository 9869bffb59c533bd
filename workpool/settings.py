"""The one settings object, shared by every command.

Sources, lowest precedence first: defaults, the config file (`--config FILE` or
`WORKPOOL_CONFIG`, JSON or TOML, keys as field names or as `WORKPOOL_*` variable names),
environment variables (`WORKPOOL_*`, plus `AZURE_STORAGE_CONNECTION_STRING`), then
command-line flags. Environment beats the file so that one checked-in config can be adjusted
per shell or per node without editing it.

Storage is chosen by what is set:
- `AZURE_STORAGE_CONNECTION_STRING` → Azure Storage with that connection string;
- `WORKPOOL_ACCOUNT_URL` + `WORKPOOL_SAS_TOKEN` → Azure Storage with a SAS token;
- `WORKPOOL_ACCOUNT_URL` alone → Azure Storage with `DefaultAzureCredential`
  (managed identity on cluster nodes, `az login` on a laptop);
- none of them → the embedded default under `WORKPOOL_HOME`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from workpool.errors import SettingsError
from workpool.messages import MAX_BATCH_IMAGES

ENV_PREFIX = "WORKPOOL_"
CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"

# Azure queue names: 3-63 characters, lowercase letters, digits and single hyphens. The poison
# queue appends "-poison" (7 characters), so the work queue's own name stops at 56.
_QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,55}$")
# Blob container names: 3-63 characters, same alphabet.
_CONTAINER_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


# How a setting travels (its field's `json_schema_extra`), read by workpool/handoff.py, which derives
# every hand-off from it: the environment of a local child (consumer node, supervisor, worker), the
# environment of a cluster node, and which values are secret (those are `SecretStr` fields).
# - {"to_consumers": True}: consumers need it, on this machine and on cluster nodes;
# - {"to_consumers": "local"}: only processes started on this machine (paths of this machine);
# - untagged: stays with the command that read it (cluster placement, control-plane secrets).
HANDOFF_KEY = "to_consumers"
_CONSUMERS: dict[str, Any] = {HANDOFF_KEY: True}
_LOCAL: dict[str, Any] = {HANDOFF_KEY: "local"}
# A consumer setting whose value on cluster nodes differs from its default here: nodes get it
# unless the user set one (e.g. the metadata service's Scheduled Events, which exist only on Azure VMs).
NODE_DEFAULT_KEY = "node_default"
SCHEDULED_EVENTS_URL = "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01"


class StorageMode(StrEnum):
    EMBEDDED = "embedded"
    CONNECTION_STRING = "connection-string"
    SAS = "sas"
    IDENTITY = "identity"


class Settings(BaseSettings):
    """Every setting workpool reads. Environment names are `WORKPOOL_<FIELD>` upper-cased."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
    )

    # --- where things live ---------------------------------------------------------------
    home: Path = Field(Path(".workpool"), description="Embedded default's folder.", json_schema_extra=_LOCAL)
    queue: str = Field(
        "workpool", description="Queue name; its poison queue is <name>-poison.", json_schema_extra=_CONSUMERS
    )
    results: str = Field(
        "workpool-results", description="Result store's blob container (Azure).", json_schema_extra=_CONSUMERS
    )

    # --- Azure Storage credentials (secrets are SecretStr: never printed) -----------------
    connection_string: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(CONNECTION_STRING_ENV, ENV_PREFIX + "CONNECTION_STRING"),
        description="Azure Storage connection string.",
        json_schema_extra=_CONSUMERS,
    )
    account_url: str | None = Field(
        None,
        description="Storage account URL (https://<acct>.queue… or the account's base URL).",
        json_schema_extra=_CONSUMERS,
    )
    sas_token: SecretStr | None = Field(
        None, description="SAS token used with account_url.", json_schema_extra=_CONSUMERS
    )

    # --- work ---------------------------------------------------------------------------
    batch_size: int = Field(
        64,
        gt=0,
        le=MAX_BATCH_IMAGES,
        description="Images per batch message (a consumer warms its `model` at this batch size).",
        json_schema_extra=_CONSUMERS,
    )
    message_ttl_s: int = Field(
        7 * 24 * 3600,
        description="Message time-to-live in seconds (default 7 days; `producer requeue --missing` re-sends "
        "expired batches); -1 never expires.",
        json_schema_extra=_CONSUMERS,
    )
    visibility_timeout_s: int = Field(
        120,
        ge=1,
        le=7 * 24 * 3600,
        description="Lease on a received batch; renewed in the background.",
        json_schema_extra=_CONSUMERS,
    )
    max_attempts: int = Field(
        5, ge=1, description="Deliveries before a batch is dead-lettered.", json_schema_extra=_CONSUMERS
    )
    idle_exit_s: float | None = Field(
        None,
        gt=0,
        description="Consumer exits after the queue has been empty this long.",
        json_schema_extra=_CONSUMERS,
    )
    prefetch_batches: int = Field(
        1,
        ge=0,
        description="Batches received and decoded ahead of the one being scored.",
        json_schema_extra=_CONSUMERS,
    )
    stop_finish_s: float = Field(
        0.0,
        ge=0,
        description="A consumer told to stop (SIGTERM, scale-in) first finishes and acks the batch it is scoring, "
        "for up to this many seconds (prefetched batches are released at once); 0: release it at once too. "
        "`launch --autoscale` sets it for its nodes, so a scale-in never abandons a batch mid-score.",
        json_schema_extra=_CONSUMERS,
    )
    decode_threads: int = Field(
        0, ge=0, description="Image decode threads; 0 sizes the pool to the machine.", json_schema_extra=_CONSUMERS
    )
    precision: Literal["float32", "mixed"] = Field(
        "float32",
        description="float32, or Keras mixed precision (float16 compute) for GPUs.",
        json_schema_extra=_CONSUMERS,
    )
    xla: bool = Field(False, description="Compile the model call with XLA.", json_schema_extra=_CONSUMERS)
    allow_unsafe_models: bool = Field(
        False,
        description="Allow models whose loading runs arbitrary code: Lambda layers in .keras/.h5 files, and "
        "TensorFlow SavedModel folders (a graph can read and write files, use the network, start processes).",
        json_schema_extra=_CONSUMERS,
    )
    # --- what a message may make a consumer read and run (docs/security.md) ---------------
    task_modules: str = Field(
        "",
        description="Modules (comma-separated; their submodules too) whose ScoringTask classes a message may name "
        "as package.module:ClassName, beyond the built-in tasks (consumer.tasks); empty: built-in tasks only.",
        json_schema_extra=_CONSUMERS,
    )
    read_containers: str = Field(
        "",
        description="Blob containers (comma-separated) a message may name for images, models and labels, beyond "
        "the run's own source container and the container of `model`.",
        json_schema_extra=_CONSUMERS,
    )
    local_roots: str | None = Field(
        None,
        description="Local folders (comma-separated) a message may name for images, models and labels; unset: any "
        "folder of this machine; `none`: no local paths (the default on cluster nodes).",
        json_schema_extra={HANDOFF_KEY: True, NODE_DEFAULT_KEY: "none"},
    )
    max_image_bytes: int = Field(
        64 * 1024**2, gt=0, description="Largest image file a consumer reads (bytes).", json_schema_extra=_CONSUMERS
    )
    max_model_bytes: int = Field(
        4 * 1024**3,
        gt=0,
        description="Largest model a consumer reads (bytes; a SavedModel folder's files together).",
        json_schema_extra=_CONSUMERS,
    )
    max_labels_bytes: int = Field(
        16 * 1024**2,
        gt=0,
        description="Largest labels or head-spec file a consumer reads (bytes).",
        json_schema_extra=_CONSUMERS,
    )
    model_cache: Path | None = Field(
        None, description="Where downloaded models are cached (default <home>/models).", json_schema_extra=_LOCAL
    )
    allow_cpu: bool = Field(
        False,
        description="Score on the CPU even when the machine has GPUs the framework cannot see.",
        json_schema_extra=_CONSUMERS,
    )
    model: str | None = Field(
        None,
        description="Model URI a consumer loads and warms before its first batch (runs pending on its queue "
        "are warmed too); batches still name their own model.",
        json_schema_extra=_CONSUMERS,
    )
    scheduled_events_url: str | None = Field(
        None,
        description="Azure Scheduled Events endpoint a consumer watches for its VM's preemption (releasing its "
        "batches at once); cluster nodes watch the instance metadata service's, this machine none unless set.",
        json_schema_extra={HANDOFF_KEY: True, NODE_DEFAULT_KEY: SCHEDULED_EVENTS_URL},
    )

    # --- reports -------------------------------------------------------------------------
    price_per_node_hour: float | None = Field(
        None, ge=0, description="Price of one node for one hour, for the cost figures of `orchestration report`."
    )

    # --- cluster placement (Batch AI and Azure Batch) ------------------------------------
    subscription_id: str | None = None
    resource_group: str | None = None
    location: str | None = None
    workspace: str | None = None
    cluster: str | None = None
    batch_account_url: str | None = None
    pool: str | None = None
    vm_size: str | None = Field(
        None,
        description="GPU VM size of the nodes (required by the cluster backends), e.g. Standard_NC24ads_A100_v4.",
    )
    vm_priority: Literal["dedicated", "spot", "lowpriority"] = Field(
        "dedicated",
        description="dedicated, or spot (preemptible, discounted; `lowpriority`, the retired name, is an alias).",
    )
    arm_endpoint: str = "https://management.azure.com"
    # What the cluster backends put on each node (docs/azure.md explains each one).
    image_publisher: str = Field("microsoft-dsvm", description="Node OS image: marketplace publisher.")
    image_offer: str = Field("ubuntu-hpc", description="Node OS image: offer (ubuntu-hpc ships NVIDIA drivers).")
    image_sku: str = Field("2404", description="Node OS image: SKU (Ubuntu 24.04).")
    image_version: str = Field("latest", description="Node OS image: version.")
    node_agent_sku_id: str = Field("batch.node.ubuntu 24.04", description="Azure Batch node agent matching the image.")
    node_package: str | None = Field(
        None,
        description="Override of what nodes install: a pinned pip requirement or wheel URL "
        "(default: the wheel of this very version, built and uploaded by `launch`).",
    )
    node_files: str = Field(
        "workpool-node-files",
        description="Blob container for what nodes install (wheel, bootstrap, constraints): `launch` writes it, "
        "nodes only read it; give consumers no write access to it (docs/azure.md).",
    )
    node_os_disk_gb: int | None = Field(
        None,
        ge=30,
        le=4095,
        description="OS disk of Azure Batch nodes in GB (default: the image's; container pools: 128, "
        "Docker keeps its images there).",
    )
    node_extras: str = Field(
        "gpu", description="Extras installed with the project on nodes (comma-separated; empty for none)."
    )
    node_image: str | None = Field(
        None,
        description="Container image (<registry>/<image>:<tag>) for a container pool; unset: start-task install.",
    )
    batch_scope: str | None = Field(
        None, description="Entra ID scope of the Batch data plane (default: derived from arm_endpoint's cloud)."
    )
    node_workers: str = Field(
        "auto",
        description="`consumer run --workers` on each node: auto (one per GPU) or N.",
        json_schema_extra=_LOCAL,  # the local supervisor reads it; cluster nodes get it on the command line
    )
    experiment: str = Field("workpool", description="Batch AI experiment holding the consumer jobs.")
    batchai_admin_user: str = Field("workpool", description="Batch AI cluster admin user name.")
    batchai_ssh_public_key: str | None = Field(None, description="Batch AI cluster admin's SSH public key.")
    batchai_log_path: str = Field(
        "$AZ_BATCHAI_JOB_TEMP", description="Batch AI stdOutErrPathPrefix (a mounted path keeps logs after the node)."
    )
    batch_job: str = Field("workpool", description="Azure Batch job id holding the consumer tasks.")
    batch_account_name: str | None = Field(None, description="Azure Batch account name (default: from the URL).")
    batch_account_key: SecretStr | None = Field(None, description="Azure Batch shared key (default: Entra ID).")
    batch_pool_allocation: Literal["batchservice", "usersubscription"] = Field(
        "batchservice",
        description="The Batch account's pool allocation mode (user subscription refuses shared-key auth).",
    )
    batch_share_storage_key: bool = Field(
        False,
        description="Azure Batch without a managed identity: put the storage connection string or SAS token in "
        "the job's environment (anyone with Batch Account Reader on the account can read it).",
    )
    managed_identity_id: str | None = Field(
        None, description="Resource id of a user-assigned managed identity for Azure Batch pool nodes."
    )
    managed_identity_client_id: str | None = Field(
        None, description="Client id of that identity; nodes get it as AZURE_CLIENT_ID for DefaultAzureCredential."
    )
    aml_idle_scale_down_s: int = Field(
        300,
        ge=0,
        description="Azure Machine Learning compute: seconds a node stays idle before the cluster releases it "
        "(AmlCompute idle_time_before_scale_down).",
    )
    cluster_poll_interval_s: float = Field(
        10.0, ge=0, description="Seconds between polls of long-running cluster operations."
    )

    # --- the autoscaler (`orchestration autoscale`, `launch --autoscale`): defaults of its flags ---
    autoscale_batches_per_node: float = Field(
        4.0, gt=0, description="Autoscaler: visible batches (queue messages) that ask for one node."
    )
    autoscale_idle_s: float = Field(
        120.0,
        ge=0,
        description="Autoscaler: seconds the queue stays empty (in flight included) before scaling to --min.",
    )
    autoscale_cooldown_s: float = Field(
        60.0, ge=0, description="Autoscaler: seconds after a size change before the pool may shrink again."
    )
    autoscale_interval_s: float = Field(5.0, gt=0, description="Autoscaler: seconds between decisions.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets-dir magic: what configures a run is visible in env, file and flags.
        return (init_settings, env_settings)

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not _QUEUE_NAME.match(value):
            raise ValueError(
                "expected 3-56 lowercase letters, digits or single hyphens, starting and ending "
                "with a letter or digit (the poison queue adds '-poison', up to Azure's 63)"
            )
        return value

    @field_validator("results", "node_files")
    @classmethod
    def _container_name(cls, value: str) -> str:
        if not _CONTAINER_NAME.match(value):
            raise ValueError("expected an Azure container name: 3-63 lowercase letters, digits or single hyphens")
        return value

    @field_validator("account_url", "arm_endpoint", "batch_account_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            check_endpoint(value)
        return value

    @field_validator("connection_string")
    @classmethod
    def _connection_string(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_connection_string(value.get_secret_value())
        return value

    @field_validator("scheduled_events_url")
    @classmethod
    def _metadata_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parsed = urlparse(value)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        if parsed.scheme == "http" and not (is_loopback(parsed.hostname) or _is_link_local(parsed.hostname)):
            raise ValueError(
                "plain http is accepted only for the metadata service (169.254.169.254) and loopback hosts"
            )
        return value

    @field_validator("message_ttl_s")
    @classmethod
    def _ttl(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError("expected -1 (never expire) or a positive number of seconds")
        return value

    @property
    def storage_mode(self) -> StorageMode:
        if self.connection_string is not None:
            return StorageMode.CONNECTION_STRING
        if self.account_url is not None:
            return StorageMode.SAS if self.sas_token is not None else StorageMode.IDENTITY
        if self.sas_token is not None:
            raise SettingsError(
                f"setting {ENV_PREFIX}SAS_TOKEN is set but {ENV_PREFIX}ACCOUNT_URL is not: "
                "a SAS token needs the account URL"
            )
        return StorageMode.EMBEDDED

    @property
    def uses_azure_storage(self) -> bool:
        return self.storage_mode is not StorageMode.EMBEDDED

    @field_validator("task_modules")
    @classmethod
    def _task_modules(cls, value: str) -> str:
        for module in split_list(value):
            if not _MODULE_NAME.match(module) or "__main__" in module.split("."):
                raise ValueError(f"{module!r} is not an importable module name (package.module, no __main__)")
        return value

    @field_validator("read_containers")
    @classmethod
    def _read_containers(cls, value: str) -> str:
        for container in split_list(value):
            if not _CONTAINER_NAME.match(container):
                raise ValueError(f"{container!r} is not an Azure container name (3-63 lowercase letters, digits, '-')")
        return value

    @field_validator("local_roots")
    @classmethod
    def _local_roots(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() != "none":
            for root in split_list(value):
                if not Path(root).is_absolute():
                    raise ValueError(f"{root!r} is not an absolute folder path (or `none`)")
        return value

    # --- derived --------------------------------------------------------------------------
    @property
    def allowed_task_modules(self) -> tuple[str, ...]:
        """Modules custom tasks may come from: the built-in tasks' package, then `task_modules`."""
        return ("consumer.tasks", *split_list(self.task_modules))

    @property
    def allowed_local_roots(self) -> tuple[Path, ...] | None:
        """Folders local paths must be under; None: any; empty: no local paths at all."""
        if self.local_roots is None:
            return None
        if self.local_roots.strip().lower() == "none":
            return ()
        return tuple(Path(root) for root in split_list(self.local_roots))

    @property
    def poison_queue(self) -> str:
        return f"{self.queue}-poison"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache if self.model_cache is not None else self.home / "models"

    def secret_values(self) -> list[str]:
        """Every secret string configured, and its notable parts, for redaction."""
        values: list[str] = []
        for name in SECRET_FIELDS:
            secret = getattr(self, name)
            if secret is not None and secret.get_secret_value():
                values.append(secret.get_secret_value())
        if self.connection_string is not None:
            values.extend(secret_parts_of_connection_string(self.connection_string.get_secret_value()))
        if self.sas_token is not None:
            values.extend(_signature_of(self.sas_token.get_secret_value()))
        return sorted({v for v in values if len(v) >= 8}, key=len, reverse=True)

    def describe(self) -> dict[str, Any]:
        """Settings as a JSON-safe dict, secrets masked: for `--dry-run` and debug output."""
        data = self.model_dump(mode="json")
        for key in SECRET_FIELDS:
            if data.get(key):
                data[key] = "***"
        return data


def split_list(value: str) -> list[str]:
    """The items of a comma-separated setting, stripped, empty ones dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def node_default_of(field: str) -> str | None:
    """The value cluster nodes get for `field` when the user set none (None: the plain default)."""
    extra = Settings.model_fields[field].json_schema_extra
    return extra.get(NODE_DEFAULT_KEY) if isinstance(extra, dict) else None  # type: ignore[return-value]


def handoff_of(field: str) -> bool | str | None:
    """How a setting travels: True (to every consumer), "local" (this machine's children), None."""
    extra = Settings.model_fields[field].json_schema_extra
    return extra.get(HANDOFF_KEY) if isinstance(extra, dict) else None  # type: ignore[return-value]


# Secret settings are exactly the `SecretStr` fields: masked, redacted, never on a command line.
SECRET_FIELDS: tuple[str, ...] = tuple(
    name for name, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation)
)


def secret_parts_of_connection_string(conn: str) -> list[str]:
    """The secret values inside a connection string (account key, SAS signature and token)."""
    parts: list[str] = []
    for item in conn.split(";"):
        key, _, value = item.partition("=")
        if key.strip().lower() in {"accountkey", "sharedaccesssignature"} and value:
            parts.append(value.strip())
            parts.extend(_signature_of(value))
    return parts


_ENDPOINT_KEYS = ("blobendpoint", "queueendpoint")


def check_connection_string(conn: str) -> None:
    """Refuse, at load time, a connection string the Azure SDKs would refuse later (or fail on
    at the first signed request). Messages name the missing or broken part, never a value."""
    parts: dict[str, str] = {}
    for item in conn.split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                "expected key=value pairs separated by ';' (DefaultEndpointsProtocol=https;AccountName=…;"
                "AccountKey=…;EndpointSuffix=core.windows.net), as the portal's 'Access keys' page shows it"
            )
        parts[key.strip().lower()] = value.strip()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        return
    if not parts.get("accountname") and not any(parts.get(k) for k in _ENDPOINT_KEYS):
        raise ValueError("names no account: expected AccountName=… (or a BlobEndpoint=…/QueueEndpoint=…)")
    if not parts.get("accountkey") and not parts.get("sharedaccesssignature"):
        raise ValueError("has no credential: expected AccountKey=… or SharedAccessSignature=…")
    account_key = parts.get("accountkey")
    if account_key:
        try:
            base64.b64decode(account_key, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("its AccountKey is not valid base64 (copy it again from the portal)") from None


def _signature_of(sas: str) -> list[str]:
    out = []
    for item in sas.lstrip("?").split("&"):
        key, _, value = item.partition("=")
        if key == "sig" and value:
            out.append(value)
    return out


def check_endpoint(url: str) -> None:
    """https everywhere; plain http only for loopback addresses (Azurite, test servers)."""
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ValueError(f"expected an http(s) URL, got {url!r}")
    if parsed.scheme == "http" and not is_loopback(parsed.hostname):
        raise ValueError(f"plain http is accepted only for loopback hosts; use https for {parsed.hostname}")


def _is_link_local(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_link_local
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def env_name(field: str) -> str:
    if field == "connection_string":
        return CONNECTION_STRING_ENV
    return ENV_PREFIX + field.upper()


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON or TOML config file; keys may be field names or WORKPOOL_* names."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist (from --config or {ENV_PREFIX}CONFIG)") from None
    except OSError as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise SettingsError(f"config file {path} is not valid {kind}: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"config file {path} must hold an object of settings, not {type(raw).__name__}")
    return {_field_name(key): value for key, value in raw.items()}


def _field_name(key: str) -> str:
    if key.upper() in {CONNECTION_STRING_ENV, ENV_PREFIX + "CONNECTION_STRING"}:
        return "connection_string"
    if key.upper().startswith(ENV_PREFIX):
        return key[len(ENV_PREFIX) :].lower()
    return key


def load_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Build the settings from defaults < config file < environment < flags.

    Flags whose value is None are treated as not given. Any problem raises `SettingsError`
    naming the setting (its environment variable) and what was expected; secret values never
    appear in the message.
    """
    if config_file is None and os.environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(os.environ[ENV_PREFIX + "CONFIG"])
    file_values = read_config_file(config_file) if config_file is not None else {}
    unknown = sorted(set(file_values) - set(Settings.model_fields))
    if unknown:
        raise SettingsError(f"config file {config_file} has unknown settings: {', '.join(unknown)}")
    from_env = {_field_name(key) for key in EnvSettingsSource(Settings)()}
    values = {k: v for k, v in file_values.items() if k not in from_env}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        settings = Settings(**values)
        settings.storage_mode  # noqa: B018 - validates the combination of storage settings
    except ValidationError as exc:
        raise SettingsError(_describe_validation_error(exc)) from None
    return settings


def _describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        # From the environment a field is named by its variable (AZURE_STORAGE_CONNECTION_STRING).
        field = _field_name(str(err["loc"][0])) if err["loc"] else "?"
        if field in Settings.model_fields:
            name = f"setting {env_name(field)} ({field})"
        else:
            name = f"unknown setting {field!r}"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {msg}")
    return "; ".join(lines)
