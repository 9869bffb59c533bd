"""Every setting handed to consumers is either a `consumer run` flag or explicitly environment-only.

A consumer setting is tagged once in its workpool/settings/ group (`to_consumers`); these tests hold the
consumer's command line to those tags, so adding a consumer option cannot silently drift: it
gets a flag, or a line in `consumer.cli.ENVIRONMENT_ONLY` saying why it has none, and a line in
docs/consumer.md.
"""

from __future__ import annotations

from pathlib import Path

import typer.main

from consumer.cli import ENVIRONMENT_ONLY, app
from workpool.settings import Settings, env_name, handoff_of

DOCS = Path(__file__).resolve().parents[1] / "docs" / "consumer.md"


def handed_to_consumers() -> set[str]:
    return {name for name in Settings.model_fields if handoff_of(name)}


def consumer_run_flags() -> dict[str, list[str]]:
    """`consumer run` options named after a setting: field name → its option strings."""
    run = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    return {p.name: list(p.opts) for p in run.params if p.name in Settings.model_fields}


def test_every_consumer_setting_is_a_flag_or_listed_as_environment_only() -> None:
    flags, env_only, handed = set(consumer_run_flags()), set(ENVIRONMENT_ONLY), handed_to_consumers()
    assert not flags & env_only, f"both a flag and listed as environment-only: {sorted(flags & env_only)}"
    missing = handed - flags - env_only
    assert not missing, (
        f"settings handed to consumers with neither a `consumer run` flag nor a line in "
        f"consumer.cli.ENVIRONMENT_ONLY: {sorted(missing)}"
    )
    stale = env_only - handed
    assert not stale, f"ENVIRONMENT_ONLY lists settings that are not handed to consumers: {sorted(stale)}"


def test_every_flag_is_a_setting_its_children_are_handed() -> None:
    # A flag for a setting that is not tagged would be lost on the way to `--workers N` children.
    untagged = {name for name in consumer_run_flags() if not handoff_of(name)}
    assert not untagged, f"`consumer run` flags whose setting is not tagged to_consumers: {sorted(untagged)}"


def test_flags_are_spelled_after_their_setting() -> None:
    for name, opts in consumer_run_flags().items():
        assert f"--{name.replace('_', '-')}" in opts, f"{name}: {opts}"


def test_each_environment_only_setting_says_why_and_is_documented() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    for name, why in ENVIRONMENT_ONLY.items():
        assert len(why.split()) >= 3, f"ENVIRONMENT_ONLY[{name!r}] needs a reason"
        if name in ("connection_string",):
            assert "AZURE_STORAGE_CONNECTION_STRING" in docs
        else:
            assert f"`{env_name(name)}`" in docs, f"{env_name(name)} is missing from docs/consumer.md"
    for name in consumer_run_flags():
        assert f"`{env_name(name)}`" in docs, f"{env_name(name)} is missing from docs/consumer.md"
