"""One launcher contract, every backend: what `launch`, `scale`, `state`, `teardown` and
`describe` promise, whatever runs the nodes (huey's one-suite-per-seam idea).

- local: the real detached supervisor and real `consumer run` processes on this machine;
- batchai: the real azure-mgmt-batchai SDK against a recording server with a stateful fake;
- azure-batch: the real azure-batch SDK against a recording server with a stateful fake of
  pools, nodes, jobs and tasks (and Azurite for the code it ships to the nodes).

Each story checks the backend's own truth (live processes, the fake service's nodes and jobs),
not only what the launcher says about itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestration.backends.azure_batch import AzureBatchLauncher
from orchestration.backends.batchai import BatchAILauncher
from orchestration.backends.local import LocalLauncher
from orchestration.deployment import active_backend
from orchestration.launcher import Launcher
from orchestration.local_state import pid_alive, read_pool, state_dir
from tests.conftest import unique
from tests.support.fake_batch_pool import FakeBatchPool
from tests.support.recording_server import (
    BATCH_KEY,
    CONNECTION_STRING,
    FakeBatchAI,
    FakeTokenCredential,
    RecordingServer,
    recording_server,
)
from tests.support.waiting import wait_for
from workpool.errors import UsageError
from workpool.settings import Settings, load_settings

pytestmark = pytest.mark.slow


@dataclass
class Backend:
    """One backend under test: a fresh launcher per call (each CLI command opens its own), and
    the truth to check it against."""

    name: str
    settings: Settings
    open: Callable[[], Launcher]
    running: Callable[[], int]  # nodes really running a consumer
    touched: Callable[[], bool]  # whether anything was started, created or changed
    settle_s: float = 0.0  # how long the backend may take to make `running` true (real processes)

    def expect_running(self, count: int) -> None:
        if self.settle_s:
            wait_for(lambda: self.running() == count, timeout_s=self.settle_s, what=f"{count} running node(s)")
        assert self.running() == count


def _local(tmp_path: Path) -> Iterator[Backend]:
    settings = load_settings(home=tmp_path / "home", queue=unique("q"), results=unique("r"))

    def running() -> int:
        pool = read_pool(state_dir(settings))
        nodes = pool.nodes if pool else []
        return len([n for n in nodes if n.state == "running" and pid_alive(n.pid, "consumer")])

    def open_local() -> Launcher:
        return LocalLauncher(settings, grace_s=15, up_after_s=1.0)

    try:
        yield Backend("local", settings, open_local, running, lambda: state_dir(settings).exists(), settle_s=60)
    finally:
        open_local().teardown(delete=True)


def _batchai(tmp_path: Path, server: RecordingServer) -> Iterator[Backend]:
    fake = FakeBatchAI(server)
    settings = load_settings(
        home=tmp_path / "home",
        subscription_id="sub-1",
        resource_group="rg-pool",
        location="westeurope",
        workspace="ws",
        cluster="gpu",
        arm_endpoint=server.url,
        cluster_poll_interval_s=0,
        vm_size="STANDARD_NC24",
        queue="images",
        results="scores",
        connection_string=CONNECTION_STRING,
        node_package="https://example.invalid/workpool.whl",
    )

    def running() -> int:
        return len([j for j in fake.jobs.values() if j["properties"]["executionState"] == "running"])

    yield Backend(
        "batchai",
        settings,
        lambda: BatchAILauncher(settings, FakeTokenCredential()),
        running,
        lambda: any(r.method != "GET" for r in server.requests),
    )


def _azure_batch(tmp_path: Path, server: RecordingServer, storage: str) -> Iterator[Backend]:
    fake = FakeBatchPool(server)
    settings = load_settings(
        home=tmp_path / "home",
        batch_account_url=server.url,
        batch_account_name="scoring",
        batch_account_key=BATCH_KEY,
        pool="gpu",
        vm_size="Standard_NC24ads_A100_v4",
        cluster_poll_interval_s=0,
        queue="images",
        results=unique("scores"),
        connection_string=storage,
        batch_share_storage_key=True,
    )

    def running() -> int:
        tasks = fake.tasks.get(settings.batch_job, {}).values()
        return len([t for t in tasks if t["state"] == "running"])

    yield Backend(
        "azure-batch",
        settings,
        lambda: AzureBatchLauncher(settings),
        running,
        lambda: any(r.method != "GET" for r in server.requests),
    )


@pytest.fixture(params=["local", "batchai", pytest.param("azure-batch", marks=pytest.mark.azurite)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "local":
        yield from _local(tmp_path)
        return
    with recording_server() as server:
        if request.param == "batchai":
            yield from _batchai(tmp_path, server)
        else:
            storage: Any = request.getfixturevalue("azurite")
            yield from _azure_batch(tmp_path, server, storage.connection_string)


# --- launch, state, scale ------------------------------------------------------------------------
def test_launch_starts_the_nodes_and_records_which_backend_runs_the_pool(backend: Backend) -> None:
    # When a pool of two is launched
    backend.open().launch(2)

    # Then two nodes run consumers, state says so, and the queue's backend is recorded (the seam
    # does it, so `scale`, `status` and `teardown` need no --backend)
    backend.expect_running(2)
    state = backend.open().state()
    assert (state.backend, state.target_nodes, len(state.nodes)) == (backend.name, 2, 2)
    assert active_backend(backend.settings) == backend.name


def test_scale_grows_and_shrinks_the_pool_down_to_zero(backend: Backend) -> None:
    # Given a pool of one
    backend.open().launch(1)
    backend.expect_running(1)

    # When it is scaled up to three, then down to one, then to zero
    backend.open().scale(3)
    backend.expect_running(3)
    assert backend.open().state().target_nodes == 3
    backend.open().scale(1)
    backend.expect_running(1)
    assert backend.open().state().target_nodes == 1
    backend.open().scale(0)

    # Then the pool is still there, with no node running a consumer
    backend.expect_running(0)
    assert backend.open().state().target_nodes == 0
    assert active_backend(backend.settings) == backend.name


# --- teardown ------------------------------------------------------------------------------------
def test_teardown_stops_every_node_and_forgets_the_backend(backend: Backend) -> None:
    # Given a running pool of two
    backend.open().launch(2)
    backend.expect_running(2)

    # When it is torn down
    backend.open().teardown()

    # Then no node runs a consumer, the target is 0, and the queue has no backend any more
    backend.expect_running(0)
    assert backend.open().state().target_nodes == 0
    assert active_backend(backend.settings) is None


def test_teardown_of_nothing_succeeds_and_changes_nothing(backend: Backend) -> None:
    # When a pool that was never launched is torn down, twice
    backend.open().teardown()
    backend.open().teardown(delete=True)

    # Then nothing was created or changed, and there is still no pool
    assert not backend.touched()
    assert backend.running() == 0
    assert backend.open().state().target_nodes == 0
    assert active_backend(backend.settings) is None


# --- describe --------------------------------------------------------------------------------------
def test_describe_plans_the_launch_and_starts_or_sends_nothing(backend: Backend) -> None:
    planned = backend.open().describe(2)

    assert planned and all(r.method and r.path for r in planned)
    assert not backend.touched()
    assert backend.running() == 0
    assert active_backend(backend.settings) is None


# --- node counts: one rule, in the seam -------------------------------------------------------------
def test_negative_node_counts_are_refused_before_anything_happens(backend: Backend) -> None:
    launcher = backend.open()
    for attempt in (launcher.launch, launcher.scale, launcher.describe):
        with pytest.raises(UsageError, match=r"^--nodes must be at least [01]\b.*got -1$"):
            attempt(-1)
    assert not backend.touched()


def test_a_pool_of_zero_is_launched_only_where_the_backend_declares_it_can_be(backend: Backend) -> None:
    launcher = backend.open()
    if launcher.min_launch_nodes == 0:
        # An empty local pool: a supervisor that `scale` or the autoscaler grows later
        launcher.launch(0)
        assert backend.open().state().target_nodes == 0
        assert active_backend(backend.settings) == backend.name
    else:
        # A cluster created with its first node: refused, naming the rule, before any request
        with pytest.raises(UsageError, match=rf"^--nodes must be at least 1 \({backend.name} creates its pool"):
            launcher.launch(0)
        with pytest.raises(UsageError, match="--nodes must be at least 1"):
            launcher.describe(0)
        assert not backend.touched()
        assert active_backend(backend.settings) is None
    assert backend.running() == 0


def test_a_pool_beyond_what_the_backend_runs_well_needs_force(backend: Backend) -> None:
    launcher = backend.open()
    most = launcher.max_nodes()
    if most is None:
        # No limit of its own (a cluster's size is bounded by its quota, which Azure enforces)
        assert launcher.describe(500)
        return
    # The local machine: more than 4 nodes per core is refused, naming --force, starting nothing
    assert most == 4 * (os.cpu_count() or 1)
    for attempt in (launcher.launch, launcher.scale, launcher.describe):
        with pytest.raises(UsageError, match="pass --force"):
            attempt(most + 1)
    assert not backend.touched()
    # and allowed with --force (planned here: starting that many processes is the point of refusing)
    assert len(launcher.describe(most + 1, force=True)) == most + 2
