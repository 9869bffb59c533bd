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

The fields live in groups, a module each (storage, consumer, cluster, autoscale, reports), with the
same environment names; `Settings` is their union. A new setting goes in its group, tagged with how it
travels (workpool/settings/tags.py).
"""

from __future__ import annotations

import json
import os
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from workpool.errors import SettingsError
from workpool.settings.autoscale import AutoscaleSettings
from workpool.settings.checks import (
    check_connection_string,
    check_endpoint,
    is_loopback,
    secret_parts_of_connection_string,
    signature_of,
    split_list,
)
from workpool.settings.cluster import ClusterSettings
from workpool.settings.consumer import ConsumerSettings
from workpool.settings.reports import ReportSettings
from workpool.settings.storage import StorageSettings
from workpool.settings.tags import (
    CONNECTION_STRING_ENV,
    ENV_PREFIX,
    HANDOFF_KEY,
    NODE_DEFAULT_KEY,
    SCHEDULED_EVENTS_URL,
    env_name,
)

__all__ = [
    "CONNECTION_STRING_ENV",
    "ENV_PREFIX",
    "HANDOFF_KEY",
    "NODE_DEFAULT_KEY",
    "SCHEDULED_EVENTS_URL",
    "SECRET_FIELDS",
    "Settings",
    "StorageMode",
    "check_connection_string",
    "check_endpoint",
    "env_name",
    "handoff_of",
    "is_loopback",
    "load_settings",
    "node_default_of",
    "read_config_file",
    "secret_parts_of_connection_string",
    "split_list",
]


class StorageMode(StrEnum):
    EMBEDDED = "embedded"
    CONNECTION_STRING = "connection-string"
    SAS = "sas"
    IDENTITY = "identity"


# The groups' fields in this order (pydantic collects fields from the last base to the first).
class Settings(AutoscaleSettings, ClusterSettings, ReportSettings, ConsumerSettings, StorageSettings, BaseSettings):
    """Every setting workpool reads. Environment names are `WORKPOOL_<FIELD>` upper-cased."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
    )

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
            values.extend(signature_of(self.sas_token.get_secret_value()))
        return sorted({v for v in values if len(v) >= 8}, key=len, reverse=True)

    def describe(self) -> dict[str, Any]:
        """Settings as a JSON-safe dict, secrets masked: for `--dry-run` and debug output."""
        data = self.model_dump(mode="json")
        for key in SECRET_FIELDS:
            if data.get(key):
                data[key] = "***"
        return data


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
