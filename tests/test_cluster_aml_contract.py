"""The launcher contract (tests/test_launcher_contract.py), for `--backend aml`: the same stories,
run by the real azure-ai-ml SDK against the AML emulator, whose jobs install the uploaded wheel and
run real consumers (so `running` counts jobs whose consumer process runs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration.backends.aml import AmlLauncher
from orchestration.launcher import Launcher
from tests.conftest import unique
from tests.support.aml_emulator import aml_emulator
from tests.support.azurite import Azurite
from tests.support.recording_server import FakeTokenCredential
from tests.test_cluster_aml import IDENTITY
from tests.test_launcher_contract import (  # noqa: F401 - the contract's stories, collected here
    Backend,
    test_a_pool_beyond_what_the_backend_runs_well_needs_force,
    test_a_pool_of_zero_is_launched_only_where_the_backend_declares_it_can_be,
    test_describe_plans_the_launch_and_starts_or_sends_nothing,
    test_launch_starts_the_nodes_and_records_which_backend_runs_the_pool,
    test_negative_node_counts_are_refused_before_anything_happens,
    test_scale_grows_and_shrinks_the_pool_down_to_zero,
    test_teardown_of_nothing_succeeds_and_changes_nothing,
    test_teardown_stops_every_node_and_forgets_the_backend,
)
from workpool.settings import load_settings

pytestmark = [pytest.mark.aml_emulator, pytest.mark.azurite, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def backend(
    azurite: Azurite,
    tmp_path: Path,
    node_wheel_cache: Path,
    batch_dependencies: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Backend]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(node_wheel_cache))
    monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "AzureCloud")  # azure-ai-ml sets it; restored after the test
    with aml_emulator(tmp_path / "aml", azurite.connection_string, dependencies_view=batch_dependencies) as aml:
        aml.set_node_env(WORKPOOL_ALLOW_CPU="true")
        settings = load_settings(
            home=tmp_path / "home",
            queue=unique("q"),
            results=unique("r"),
            connection_string=azurite.connection_string,
            arm_endpoint=aml.url,
            subscription_id=aml.subscription,
            resource_group=aml.resource_group,
            workspace=aml.workspace,
            cluster="gpu",
            vm_size="Standard_NC4as_T4_v3",
            managed_identity_id=IDENTITY,
            managed_identity_client_id="5e1f0000-0000-0000-0000-0000000000c1",
            node_extras="",
            allow_cpu=True,
            cluster_poll_interval_s=0.2,
        )

        def running() -> int:
            return len([j for j in aml.jobs() if j["status"] == "Running"])

        def touched() -> bool:
            return any(r.method != "GET" and not r.path.endswith("/listNodes") for r in aml.requests)

        def open_aml() -> Launcher:
            return AmlLauncher(settings, FakeTokenCredential())

        try:
            yield Backend("aml", settings, open_aml, running, touched, settle_s=240)
        finally:
            open_aml().teardown()
