"""Hand the settings in use to the processes that work for them: local children and cluster nodes.

A consumer must see exactly the storage, queue and work settings its launcher resolved (from a
config file, the environment and flags). Every hand-off is derived from one place, each
field's tag in workpool/settings/ (its group module) (`json_schema_extra={"to_consumers": ...}`), so a new
consumer setting is tagged once and reaches every kind of child:

- `child_env`: the environment of a process started on this machine (a local node, the local
  supervisor, a GPU worker of `consumer run --workers N`): every tagged setting that was set;
- `node_environment`: what a cluster node's consumer gets (settings tagged for consumers, never
  paths of this machine), split into plain values and secrets so each backend sends secrets its
  safest way; with a managed identity no key or token travels at all;
- `secret_env_names`: the variables whose values are secret (masked in `--dry-run`).

Secrets travel only in environments, never on a command line (where `ps` shows them) and never
in a state file. Only values that differ from the defaults travel: a child resolves its
defaults the same way (same code, same version), so what the user did not set stays unset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pydantic import SecretStr

import workpool
from workpool.errors import SettingsError
from workpool.settings import (
    ENV_PREFIX,
    SECRET_FIELDS,
    Settings,
    env_name,
    handoff_of,
    node_default_of,
)

# The folder holding the `workpool`, `consumer`, `producer` and `orchestration` packages, so a
# child imports the same code as its parent even when the project is not pip-installed.
PROJECT_ROOT = Path(workpool.__file__).resolve().parents[1]
CONFIG_ENV = ENV_PREFIX + "CONFIG"
# Sent to nodes even at their default value, so a node's task environment names its queue and
# result store for whoever reads it in the portal.
_ALWAYS_TO_NODES = ("queue", "results")


def setting_text(value: object) -> str:
    """A setting's value as its environment variable text (what the settings loader reads back)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, Path):
        return str(value.absolute())
    return str(value)


def secret_env_names() -> frozenset[str]:
    """Environment variable names whose values are secrets (to mask in `--dry-run`)."""
    return frozenset({env_name(f) for f in SECRET_FIELDS} | {ENV_PREFIX + "CONNECTION_STRING"})


def _set_values(settings: Settings, reaches: tuple[bool | str, ...]) -> dict[str, object]:
    """Tagged settings (tag in `reaches`) whose value was set: field name → value."""
    values: dict[str, object] = {}
    for name, info in Settings.model_fields.items():
        if handoff_of(name) not in reaches:
            continue
        value = getattr(settings, name)
        if value is not None and value != info.default:
            values[name] = value
    return values


def child_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) handing `settings` to a child on this machine."""
    env = dict(os.environ if base is None else base)
    # Drop inherited settings (and the config file, already read) so the child sees exactly these
    # values. Other WORKPOOL_* variables (log level, a task's own knobs) pass through.
    setting_names = {env_name(f) for f in Settings.model_fields} | {ENV_PREFIX + "CONNECTION_STRING", CONFIG_ENV}
    for key in list(env):
        if key in setting_names:
            del env[key]
    for name, value in _set_values(settings, (True, "local")).items():
        env[env_name(name)] = setting_text(value)
    env[env_name("home")] = str(settings.home.absolute())
    paths = [str(PROJECT_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


@dataclass
class NodeEnvironment:
    plain: dict[str, str] = field(default_factory=dict)
    secret: dict[str, str] = field(default_factory=dict)


def node_environment(settings: Settings, *, identity: bool = False) -> NodeEnvironment:
    """The settings a consumer on a cluster node needs, split into plain values and secrets.

    With `identity`, nodes sign in to storage with their managed identity: only the storage
    account URL travels, never a key or SAS token, even when this machine uses one.
    """
    env = NodeEnvironment()
    values = {name: getattr(settings, name) for name in _ALWAYS_TO_NODES} | _set_values(settings, (True,))
    for name in Settings.model_fields:  # consumer settings with a value of their own on cluster nodes
        if handoff_of(name) is True and getattr(settings, name) is None and (default := node_default_of(name)):
            values.setdefault(name, default)
    if identity:
        values = {k: v for k, v in values.items() if k not in SECRET_FIELDS}
        url = settings.account_url or account_url_of_connection_string(settings)
        if url is None:
            raise SettingsError(
                f"nodes with a managed identity need the storage account: set {env_name('account_url')} "
                "(for example https://<account>.blob.core.windows.net)"
            )
        values["account_url"] = url
        if settings.managed_identity_client_id:
            env.plain["AZURE_CLIENT_ID"] = settings.managed_identity_client_id
    for name, value in values.items():
        target = env.secret if name in SECRET_FIELDS else env.plain
        target[env_name(name)] = setting_text(value)
    return env


def account_url_of_connection_string(settings: Settings) -> str | None:
    """The blob endpoint named by the connection string (for nodes that sign in without it)."""
    if settings.connection_string is None:
        return None
    parts = {}
    for item in settings.connection_string.get_secret_value().split(";"):
        key, _, value = item.partition("=")
        parts[key.strip().lower()] = value.strip()
    if parts.get("blobendpoint"):
        return parts["blobendpoint"]
    if parts.get("accountname"):
        protocol = parts.get("defaultendpointsprotocol", "https")
        suffix = parts.get("endpointsuffix", "core.windows.net")
        return f"{protocol}://{parts['accountname']}.blob.{suffix}"
    return None
