"""Shared fixtures: the Azurite server and the two storage backends every contract test runs on.

Without Node or the installed Azurite, Azurite tests skip on a developer machine but fail in
CI (`CI=true`), so a broken install can never pass as green.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support import tiers
from tests.support.azurite import Azurite, unavailable_reason
from tests.support.shared import build_once
from workpool.handoff import child_env
from workpool.memory import mounted
from workpool.settings import Settings, load_settings

if TYPE_CHECKING:
    from tests.support.batch_emulator import BatchEmulator

TEST_TASK_MODULES = "tests"
BACKENDS = ["embedded", pytest.param("azurite", marks=pytest.mark.azurite)]
# The contract suites also run on the in-memory backends (workpool/memory.py); tests of the
# roles running in the test's own process use `IN_PROCESS_BACKENDS`: memory instead of the
# embedded files (which the contract suites keep covering), and Azurite.
CONTRACT_BACKENDS = ["embedded", "memory", pytest.param("azurite", marks=pytest.mark.azurite)]
IN_PROCESS_BACKENDS = ["memory", pytest.param("azurite", marks=pytest.mark.azurite)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test exactly one tier (tests/support/tiers.py says how it is inferred)."""
    problems = []
    for item in items:
        markers = {mark.name for mark in item.iter_markers()}
        fixturedefs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        fixture_functions = [defs[-1].func for defs in fixturedefs.values() if defs]
        fixtures = set(getattr(item, "fixturenames", ()))
        try:
            starts = tiers.starts_processes(getattr(item, "obj", None), fixture_functions)
            tier = tiers.tier_of(markers, fixtures, starts)
        except ValueError as exc:
            problems.append(f"{item.nodeid}: {exc}")
            continue
        if not markers & set(tiers.TIERS):
            item.add_marker(tier)
    problems += [f"{item.nodeid}: has no tier" for item in items if len(tiers.tiers_of(item)) != 1]
    if problems:
        raise pytest.UsageError("every test needs exactly one tier:\n" + "\n".join(problems))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see no storage settings from the developer's shell."""
    for key in list(os.environ):
        if key.startswith("WORKPOOL_") or key == "AZURE_STORAGE_CONNECTION_STRING":
            monkeypatch.delenv(key)
    # Tests name their own task classes (tests.support.*, tests.test_*): allowed like an operator would.
    # tests/test_security_*.py remove it to check the default (built-in tasks only).
    monkeypatch.setenv("WORKPOOL_TASK_MODULES", TEST_TASK_MODULES)


def require_azurite() -> None:
    """Skip when Azurite can't run here, except in CI, where that is a failure."""
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Azurite is required in CI: {reason}")
        pytest.skip(f"Azurite unavailable: {reason}")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One in-memory Azurite shared by the session's tests."""
    require_azurite()
    server = Azurite()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite of the test's own, persisting to disk, so it can be stopped and restarted."""
    require_azurite()
    server = Azurite(location=tmp_path / "azurite-data")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def node_wheel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An XDG_CACHE_HOME holding this checkout's wheel (orchestration/wheel.py), so `launch` finds it
    built: built once per run, shared by every xdist worker (tests/support/shared.py)."""

    def build(home: Path) -> Path:
        from orchestration import wheel

        project = wheel.project()
        wheel.build_wheel(project, wheel.source_digest(project), home / "workpool" / "wheels")
        return home

    return build_once(tmp_path_factory, "xdg-cache", build)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny `.keras` classifier for the emulated clusters' runs, built once for all xdist workers."""
    from tests.support.models import save_tiny_classifier

    return build_once(tmp_path_factory, "tiny-model", save_tiny_classifier)


@pytest.fixture(scope="session")
def batch_dependencies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The emulated Batch nodes' view of the installed dependencies (built once per session)."""
    from tests.support.batch_emulator.environment import dependencies_view

    return dependencies_view(tmp_path_factory.mktemp("batch-deps"))


@pytest.fixture
def batch_emulator(tmp_path: Path, batch_dependencies: Path) -> Iterator[BatchEmulator]:
    """An Azure Batch emulator of the test's own (see tests/support/batch_emulator); every node
    process it started is killed when the test ends."""
    from tests.support.batch_emulator import batch_emulator as emulated

    with emulated(tmp_path / "batch", dependencies_view=batch_dependencies) as emulator:
        yield emulator


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings for a fresh queue and result container on the backend under test.

    On "memory", queues and result stores of this home live in the test process's memory
    (`workpool.memory`) until the test ends: for tests whose roles all run in this process.
    """
    flags: dict[str, object] = {"home": tmp_path / "home", "queue": unique("q"), "results": unique("r")}
    if backend == "azurite":
        server: Azurite = request.getfixturevalue("azurite")
        flags["connection_string"] = server.connection_string
    settings = load_settings(**flags)
    if backend == "memory":
        with mounted(settings.home):
            yield settings
    else:
        yield settings


def backend_env(settings: Settings) -> dict[str, str]:
    """Environment that hands `settings` to a child process (CLI tests): the product's own hand-off."""
    return child_env(settings, base={k: v for k, v in os.environ.items() if not k.startswith("WORKPOOL_")})
