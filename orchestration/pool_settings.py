"""The settings a pool's nodes run with, and the ones in force now: no silent mix.

Nodes get their settings when the pool is launched (the local supervisor hands its launch-time
environment to every node it starts, a cluster pool keeps its start task's environment), so
nodes added later by `scale` or the autoscaler run with the pool's settings, not with what the
shell says today. `launch` records those settings in `<home>/deployments/<queue>.settings.json`
(secrets left out: they are never written to a state file); `scale` compares them with the
settings in force and names every difference, with the step that applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orchestration.local_state import read_json, write_json
from workpool.handoff import child_env, secret_env_names
from workpool.settings import Settings

# How a changed setting reaches the nodes (the poison hints and `scale` name it).
APPLY_STEP = "`orchestration teardown`, then `orchestration launch` again (in-flight batches are released, not lost)"


@dataclass(frozen=True)
class SettingChange:
    name: str  # the environment variable
    pool: str | None  # what the pool's nodes run with (None: unset, the default)
    now: str | None  # what is in force here now

    def describe(self) -> str:
        return f"{self.name}: {self.pool or '(default)'} on the pool, {self.now or '(default)'} now"


def _path(settings: Settings) -> Path:
    return settings.home.absolute() / "deployments" / f"{settings.queue}.settings.json"


def node_settings(settings: Settings) -> dict[str, str]:
    """The settings variables a node started now would get, secrets left out."""
    hidden = secret_env_names() | {"PYTHONPATH"}
    return {key: value for key, value in child_env(settings, base={}).items() if key not in hidden}


def record_pool_settings(settings: Settings) -> None:
    """At launch: what the pool's nodes run with."""
    write_json(_path(settings), node_settings(settings))


def settings_drift(settings: Settings) -> list[SettingChange]:
    """Settings in force now that differ from the pool's (none when the pool's are not recorded)."""
    recorded = read_json(_path(settings))
    if not isinstance(recorded, dict):
        return []
    now = node_settings(settings)
    return [
        SettingChange(name, recorded.get(name), now.get(name))
        for name in sorted(set(recorded) | set(now))
        if recorded.get(name) != now.get(name)
    ]


def drift_warning(changes: list[SettingChange]) -> str:
    lines = [
        f"warning: {len(changes)} setting(s) differ from the pool's; its nodes, the ones added now included, "
        "keep running with the pool's:"
    ]
    lines += [f"  {change.describe()}" for change in changes]
    lines.append(f"To run with the settings in force now: {APPLY_STEP}.")
    return "\n".join(lines)


_SETTING = re.compile(r"\bWORKPOOL_[A-Z0-9_]+\b")


def apply_hint(reason: str, run_id: str) -> str | None:
    """For a poison reason that tells the user to change a setting: the steps that really apply it
    to a running pool (setting it in a shell reaches no node that is already running)."""
    names = sorted(set(_SETTING.findall(reason)))
    if not names:
        return None
    return (
        f"{', '.join(names)} reaches the nodes only when the pool is launched: set it, then {APPLY_STEP}, "
        f"then `producer requeue --run {run_id} --failed`"
    )
