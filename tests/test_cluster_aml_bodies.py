"""What `--backend aml` would send (`--dry-run`): the compute and job bodies, built by azure-ai-ml,
with no key anywhere; the settings it refuses before sending anything; Batch AI's retirement note."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from orchestration.backends.aml import AmlLauncher
from orchestration.backends.batchai import BatchAILauncher
from tests.support.recording_server import CONNECTION_STRING
from workpool.errors import SettingsError
from workpool.settings import Settings, load_settings

IDENTITY = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/nodes"


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": tmp_path / "home",
        "subscription_id": "s1",
        "resource_group": "rg",
        "workspace": "ws",
        "cluster": "gpu",
        "vm_size": "Standard_NC24ads_A100_v4",
        "queue": "images",
        "results": "scores",
        "connection_string": CONNECTION_STRING,
        "managed_identity_id": IDENTITY,
        "managed_identity_client_id": "c1d2",
    }
    values.update(overrides)
    return load_settings(**values)


def plan(settings: Settings, nodes: int = 2) -> list[Any]:
    return AmlLauncher(settings).describe(nodes)


def test_the_dry_run_plans_a_dedicated_compute_from_zero_and_one_identity_job_per_node(tmp_path: Path) -> None:
    compute, *jobs = plan(settings_for(tmp_path))

    assert compute.method == "PUT" and compute.path.endswith("/workspaces/ws/computes/gpu?api-version=2024-10-01")
    props = compute.body["properties"]["properties"]
    assert (props["vmSize"], props["vmPriority"]) == ("Standard_NC24ads_A100_v4", "Dedicated")
    assert props["scaleSettings"]["minNodeCount"] == 0 and props["scaleSettings"]["maxNodeCount"] == 2
    assert props["scaleSettings"]["nodeIdleTimeBeforeScaleDown"] == "PT5M"
    assert (
        compute.body["identity"]["type"] == "UserAssigned"
        and IDENTITY in compute.body["identity"]["userAssignedIdentities"]
    )
    assert [j.path.split("?")[0].rsplit("/", 1)[1] for j in jobs] == [
        "gpu-images-consumer-0001",
        "gpu-images-consumer-0002",
    ]
    job = jobs[0].body["properties"]
    assert job["identity"] == {"identityType": "Managed", "clientId": "c1d2"}
    assert job["computeId"].endswith("/computes/gpu") and job["environment"]["image"].startswith(
        "mcr.microsoft.com/azureml/"
    )
    assert job["inputs"]["wheel"]["jobInputType"] == "uri_file" and job["inputs"]["wheel"]["uri"].endswith(".whl")
    assert "sha256sum -c" in job["command"] and "consumer run" not in job["command"]
    assert '/consumer" run --workers auto --worker-id gpu-images-consumer-0001' in job["command"]
    env = job["environmentVariables"]
    assert env["WORKPOOL_ACCOUNT_URL"].startswith("http") and env["AZURE_CLIENT_ID"] == "c1d2"
    text = json.dumps([r.body for r in [compute, *jobs]])
    assert "AccountKey" not in text and "Eby8" not in text and "CONNECTION_STRING" not in text


def test_spot_nodes_are_the_low_priority_tier(tmp_path: Path) -> None:
    compute, *_ = plan(settings_for(tmp_path, vm_priority="spot"), 1)

    assert compute.body["properties"]["properties"]["vmPriority"] == "LowPriority"


def test_a_key_without_an_identity_is_refused_naming_the_identity_settings(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="WORKPOOL_MANAGED_IDENTITY_ID") as error:
        plan(settings_for(tmp_path, managed_identity_id=None, managed_identity_client_id=None))

    assert "WORKPOOL_MANAGED_IDENTITY_CLIENT_ID" in str(error.value) and "AccountKey" not in str(error.value)


@pytest.mark.parametrize("missing", ["workspace", "cluster", "vm_size"])
def test_missing_placement_is_named(tmp_path: Path, missing: str) -> None:
    with pytest.raises(SettingsError, match=f"WORKPOOL_{missing.upper()}"):
        plan(settings_for(tmp_path, **{missing: None}))


def test_a_retired_size_is_refused_as_for_batch(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"NCv3 .*retired"):
        plan(settings_for(tmp_path, vm_size="Standard_NC6s_v3"))


def test_batchai_says_it_is_retired_and_names_aml(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(tmp_path, location="westeurope", node_package="https://example.invalid/workpool.whl")
    with caplog.at_level(logging.WARNING):
        planned = BatchAILauncher(settings).describe(1)

    assert "Batch AI is retired" in planned[0].note and "--backend aml" in planned[0].note
    assert any("--backend aml" in r.message for r in caplog.records)
