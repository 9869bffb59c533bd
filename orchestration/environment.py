"""Hand the settings in use to child processes (local nodes, producer runs) as `WORKPOOL_*` variables.

A child must see exactly the storage and queue its parent resolved (from a config file, the
environment and flags), so every setting that has a value is exported under its documented
variable name. Secrets travel only in the child's environment, never on a command line (where
`ps` shows them) and never in a state file.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from pydantic import SecretStr

import orchestration
from workpool.settings import ENV_PREFIX, Settings, env_name

# The folder holding the `workpool`, `consumer`, `producer` and `orchestration` packages, so a
# child imports the same code as its parent even when the project is not pip-installed.
PROJECT_ROOT = Path(orchestration.__file__).resolve().parents[1]

CONFIG_ENV = ENV_PREFIX + "CONFIG"

# Secrets that only talk to the cluster's control plane: a consumer never needs them.
CLUSTER_SECRETS = frozenset({"batch_account_key"})


def secret_names() -> frozenset[str]:
    """Environment variable names whose values are secrets (to redact in `--dry-run`)."""
    return frozenset(env_name(f) for f, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation))


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with every setting that differs from its default."""
    env = dict(os.environ if base is None else base)
    # Drop inherited settings (and the config file, already read) so the child sees exactly these
    # values. Other WORKPOOL_* variables (log level, a task's own knobs) pass through.
    setting_names = {env_name(f) for f in Settings.model_fields} | {ENV_PREFIX + "CONNECTION_STRING", CONFIG_ENV}
    for key in list(env):
        if key in setting_names:
            del env[key]
    for field, info in Settings.model_fields.items():
        value = getattr(settings, field)
        # Defaults are left for the child to resolve the same way; only what was set travels.
        if value is None or value == info.default or field in CLUSTER_SECRETS:
            continue
        env[env_name(field)] = _text(value)
    env[env_name("home")] = str(settings.home.absolute())
    paths = [str(PROJECT_ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _text(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, Path):
        return str(value.absolute())
    return str(value)
