"""`orchestration launch/scale/status/teardown --backend azure-batch|batchai` end to end.

Azure Batch runs as a real `python -m orchestration` process (shared-key auth needs no sign-in)
talking to the recording server. Batch AI needs an Entra ID token, which no process here can
get, so its commands run in-process through typer's CliRunner with the fake token credential
standing in for DefaultAzureCredential; everything after the credential is the real SDK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from tests.conftest import unique
from tests.support.azurite import Azurite
from tests.support.fake_batch_pool import FakeBatchPool
from tests.support.recording_server import (
    BATCH_KEY,
    CONNECTION_STRING,
    SAS_TOKEN,
    SECRETS,
    FakeBatchAI,
    FakeTokenCredential,
    RecordingServer,
    arm_error,
    batch_error,
    recording_server,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with recording_server() as s:
        yield s


def batch_env(server: RecordingServer, home: Path, storage: str | None = None, **extra: str) -> dict[str, str]:
    """A user's shell for the Azure Batch backend; `storage` (Azurite) where the wheel is uploaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKPOOL_", "AZURE_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        WORKPOOL_HOME=str(home),
        WORKPOOL_QUEUE="images",
        WORKPOOL_BATCH_ACCOUNT_URL=server.url,
        WORKPOOL_BATCH_ACCOUNT_NAME="scoring",
        WORKPOOL_BATCH_ACCOUNT_KEY=BATCH_KEY,
        WORKPOOL_POOL="gpu",
        WORKPOOL_VM_SIZE="Standard_NC24ads_A100_v4",
        WORKPOOL_CLUSTER_POLL_INTERVAL_S="0",
        WORKPOOL_BATCH_SHARE_STORAGE_KEY="true",  # no identity here: the storage key travels, by choice
    )
    if storage is None:
        env.update(
            AZURE_STORAGE_CONNECTION_STRING=CONNECTION_STRING,
            WORKPOOL_SAS_TOKEN=SAS_TOKEN,
            WORKPOOL_ACCOUNT_URL="https://imagesacct.blob.core.windows.net",
        )
    else:
        env.update(AZURE_STORAGE_CONNECTION_STRING=storage, WORKPOOL_RESULTS=unique("results"))
    env.update(extra)
    return env


def orchestration(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestration", *args], env=env, capture_output=True, text=True, timeout=60
    )


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert not [s for s in SECRETS if s in text]


@pytest.mark.azurite
def test_azure_batch_launch_scale_status_teardown_as_a_user_runs_them(
    server: RecordingServer, tmp_path: Path, azurite: Azurite
) -> None:
    fake = FakeBatchPool(server)
    env = batch_env(server, tmp_path / "home", azurite.connection_string)

    launched = orchestration(env, "launch", "--backend", "azure-batch", "--nodes", "2")
    assert launched.returncode == 0, launched.stderr
    assert "launched 2 node(s) on azure-batch" in launched.stderr
    assert len(fake.tasks["workpool"]) == 2

    # scale and teardown find the backend from the launch record: no --backend needed.
    scaled = orchestration(env, "scale", "--nodes", "3")
    assert scaled.returncode == 0, scaled.stderr
    assert server.sent("POST", "/resize$")[-1].body["targetDedicatedNodes"] == 3
    assert sorted(fake.tasks["workpool"]) == ["consumer-0001", "consumer-0002", "consumer-0003"]

    # status reads the queue too: point it at the embedded queue of the same home.
    status_env = {k: v for k, v in env.items() if k not in ("AZURE_STORAGE_CONNECTION_STRING", "WORKPOOL_RESULTS")}
    (tmp_path / "home" / "results").mkdir(parents=True, exist_ok=True)
    status = orchestration(status_env, "status", "--json")
    assert status.returncode == 0, status.stderr
    cluster = json.loads(status.stdout)["cluster"]
    assert cluster["backend"] == "azure-batch" and cluster["target_nodes"] == 3
    assert "allocation steady" in cluster["detail"] and len(cluster["nodes"]) == 3

    down = orchestration(env, "teardown", "--delete")
    assert down.returncode == 0, down.stderr
    assert fake.pools == {} and fake.jobs == {}

    outputs = (launched.stdout, launched.stderr, scaled.stderr, status.stdout, status.stderr, down.stderr)
    assert_no_secret(*outputs)
    assert not [text for text in outputs if azurite.connection_string in text]
    for request in server.requests:
        body = request.body if isinstance(request.body, dict) else {}
        for task in body.get("value", []):
            assert_no_secret(task.get("commandLine", ""))


def test_azure_batch_dry_run_prints_the_requests_without_credentials_or_secrets(
    server: RecordingServer, tmp_path: Path
) -> None:
    env = batch_env(server, tmp_path / "home")
    del env["WORKPOOL_BATCH_ACCOUNT_KEY"]  # no credential of any kind

    result = orchestration(env, "launch", "--backend", "azure-batch", "--nodes", "2", "--dry-run", "--json")

    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [(r["method"], r["path"].split("?")[0]) for r in plan["requests"]] == [
        ("POST", "/pools"),
        ("POST", "/jobs"),
        ("POST", "/jobs/workpool/addtaskcollection"),
    ]
    pool = plan["requests"][0]["body"]
    files = {f["filePath"]: f["httpUrl"] for f in pool["startTask"]["resourceFiles"]}
    assert set(files) == {"workpool-bootstrap.sh", "workpool-0.1.0-py3-none-any.whl", "workpool-constraints.txt"}
    assert all(url.endswith("?***") for url in files.values())  # the SAS is made at launch, never shown
    assert "travels to the nodes in the job's environment" in result.stderr  # the warnings launch gives
    assert pool["vmSize"] == "Standard_NC24ads_A100_v4"
    assert pool["virtualMachineConfiguration"]["imageReference"]["sku"] == "2404"
    assert "NC6" not in result.stdout and "WORKPOOL_NODE_PACKAGE" not in result.stdout
    assert "***" in result.stdout
    assert_no_secret(result.stdout, result.stderr)
    assert server.requests == []


def test_azure_batch_dry_run_of_a_container_pool_shows_the_image(server: RecordingServer, tmp_path: Path) -> None:
    image = "scoringacr.azurecr.io/workpool:0.1.0"
    env = batch_env(server, tmp_path / "home", WORKPOOL_NODE_IMAGE=image)
    del env["WORKPOOL_BATCH_ACCOUNT_KEY"]

    result = orchestration(env, "launch", "--backend", "azure-batch", "--nodes", "1", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert f"nodes run the container image {image}" in result.stdout
    assert '"containerConfiguration": {"type": "dockerCompatible", "containerImageNames": ["' + image in result.stdout
    assert "containerRunOptions" not in result.stdout  # Batch gives container tasks the GPUs itself
    assert '"osDisk": {"diskSizeGB": 128}' in result.stdout  # Docker keeps the image on the OS disk
    assert "startTask" not in result.stdout and "WORKPOOL_NODE_PACKAGE" not in result.stdout
    assert_no_secret(result.stdout, result.stderr)
    assert server.requests == []


def test_azure_batch_dry_run_of_an_identity_pool_without_its_placement_exits_2(
    server: RecordingServer, tmp_path: Path
) -> None:
    identity = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/scorer"
    env = batch_env(server, tmp_path / "home", WORKPOOL_MANAGED_IDENTITY_ID=identity)
    del env["WORKPOOL_BATCH_ACCOUNT_KEY"]

    result = orchestration(env, "launch", "--backend", "azure-batch", "--nodes", "1", "--dry-run")

    assert result.returncode == 2, result.stdout
    assert "WORKPOOL_SUBSCRIPTION_ID" in result.stderr and "WORKPOOL_RESOURCE_GROUP" in result.stderr
    assert "/subscriptions/None" not in result.stdout + result.stderr
    assert server.requests == []


@pytest.mark.parametrize("size", ["", "Standard_NC6s_v3"])
def test_a_missing_or_retired_vm_size_exits_2_naming_the_variable(
    server: RecordingServer, tmp_path: Path, size: str
) -> None:
    env = batch_env(server, tmp_path / "home", WORKPOOL_VM_SIZE=size)
    if not size:
        del env["WORKPOOL_VM_SIZE"]

    result = orchestration(env, "launch", "--backend", "azure-batch", "--nodes", "2", "--dry-run")

    assert result.returncode == 2
    assert "WORKPOOL_VM_SIZE" in result.stderr and "Standard_NC24ads_A100_v4" in result.stderr
    assert "Traceback" not in result.stderr
    assert server.requests == []


@pytest.mark.azurite
def test_launch_wait_stops_with_the_start_task_failure_instead_of_waiting_for_ever(
    server: RecordingServer, tmp_path: Path, azurite: Azurite
) -> None:
    from azure.storage.queue import QueueClient

    FakeBatchPool(server, start_task_stderr="workpool-bootstrap: FAILED: pip could not install the wheel\n")
    env = batch_env(server, tmp_path / "home", azurite.connection_string, WORKPOOL_QUEUE="waitfail")
    for name in ("waitfail", "waitfail-poison"):
        QueueClient.from_connection_string(azurite.connection_string, name).create_queue()
    # Work that no node will ever take keeps `launch --wait` waiting.
    QueueClient.from_connection_string(azurite.connection_string, "waitfail").send_message("a batch")

    result = orchestration(env, "launch", "--backend", "azure-batch", "--nodes", "2", "--wait")

    assert result.returncode == 1, result.stderr
    assert "the azure-batch nodes cannot run consumers: all 2 node(s) failed" in result.stderr
    assert "FAILED: pip could not install the wheel" in result.stderr
    assert "tore down the azure-batch pool" in result.stderr
    assert server.sent("POST", "/resize$")[-1].body["targetDedicatedNodes"] == 0
    assert "Traceback" not in result.stderr


@pytest.mark.azurite
def test_azure_batch_refusal_exits_1_with_one_clear_line(
    server: RecordingServer, tmp_path: Path, azurite: Azurite
) -> None:
    FakeBatchPool(server)
    server.route("POST", "^/pools$", batch_error(403, "InsufficientAccountQuota", "Quota for NCadsA100v4 is 0."))
    env = batch_env(server, tmp_path / "home", azurite.connection_string)

    result = orchestration(env, "launch", "--backend", "azure-batch", "--nodes", "2")

    assert result.returncode == 1
    assert "error: creating Azure Batch pool gpu" in result.stderr
    assert "403" in result.stderr and "InsufficientAccountQuota: Quota for NCadsA100v4 is 0." in result.stderr
    assert "already made: uploaded wheels/" in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_secret(result.stderr)


def test_missing_pool_settings_exit_2_naming_the_variable(server: RecordingServer, tmp_path: Path) -> None:
    env = batch_env(server, tmp_path / "home")
    del env["WORKPOOL_POOL"]

    result = orchestration(env, "launch", "--backend", "azure-batch", "--nodes", "2")

    assert result.returncode == 2
    assert "WORKPOOL_POOL" in result.stderr
    assert server.requests == []


# --- Batch AI, in process ----------------------------------------------------------------------------
@pytest.fixture
def batchai_env(server: RecordingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    credential = FakeTokenCredential()
    monkeypatch.setattr("orchestration.backends.batchai.default_credential", lambda: credential)
    return {
        "WORKPOOL_HOME": str(tmp_path / "home"),
        "WORKPOOL_QUEUE": "images",
        "WORKPOOL_SUBSCRIPTION_ID": "sub-1",
        "WORKPOOL_RESOURCE_GROUP": "rg-pool",
        "WORKPOOL_LOCATION": "westeurope",
        "WORKPOOL_WORKSPACE": "ws",
        "WORKPOOL_CLUSTER": "gpu",
        "WORKPOOL_VM_SIZE": "Standard_NC24ads_A100_v4",
        "WORKPOOL_NODE_PACKAGE": "https://pkgs.example.com/wheels/workpool-0.1.0-py3-none-any.whl",
        "WORKPOOL_ARM_ENDPOINT": server.url,
        "WORKPOOL_CLUSTER_POLL_INTERVAL_S": "0",
        "AZURE_STORAGE_CONNECTION_STRING": CONNECTION_STRING,
        "WORKPOOL_SAS_TOKEN": SAS_TOKEN,
        "WORKPOOL_ACCOUNT_URL": "https://imagesacct.blob.core.windows.net",
    }


def invoke(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def test_batchai_launch_scale_teardown_through_the_cli(server: RecordingServer, batchai_env: dict[str, str]) -> None:
    fake = FakeBatchAI(server)

    launched = invoke(batchai_env, "launch", "--backend", "batchai", "--nodes", "2")
    assert launched.exit_code == 0, launched.output
    assert len(server.sent("PUT", r"/jobs/[^/]+$")) == 2
    cluster = server.sent("PUT", "/clusters/gpu$")[0].body["properties"]
    assert cluster["scaleSettings"]["manual"]["targetNodeCount"] == 2

    scaled = invoke(batchai_env, "scale", "--nodes", "1")
    assert scaled.exit_code == 0, scaled.output
    assert server.sent("PATCH")[-1].body["properties"]["scaleSettings"]["manual"]["targetNodeCount"] == 1
    assert len(server.sent("POST", "/terminate$")) == 1

    down = invoke(batchai_env, "teardown")
    assert down.exit_code == 0, down.output
    assert server.sent("PATCH")[-1].body["properties"]["scaleSettings"]["manual"]["targetNodeCount"] == 0
    assert all(j["properties"]["executionState"] == "failed" for j in fake.jobs.values())
    assert_no_secret(launched.output, scaled.output, down.output)


def test_batchai_status_shows_the_cluster_and_its_jobs(server: RecordingServer, batchai_env: dict[str, str]) -> None:
    FakeBatchAI(server)
    assert invoke(batchai_env, "launch", "--backend", "batchai", "--nodes", "2").exit_code == 0
    embedded = {
        k: v for k, v in batchai_env.items() if k not in ("AZURE_STORAGE_CONNECTION_STRING", "WORKPOOL_SAS_TOKEN")
    }
    embedded.pop("WORKPOOL_ACCOUNT_URL")
    (Path(embedded["WORKPOOL_HOME"]) / "results").mkdir(parents=True, exist_ok=True)

    status = invoke(embedded, "status", "--json")

    assert status.exit_code == 0, status.output
    cluster = json.loads(status.stdout)["cluster"]
    assert cluster["backend"] == "batchai" and cluster["target_nodes"] == 2
    assert [(n["id"], n["state"]) for n in cluster["nodes"]] == [
        ("consumer-0001", "running"),
        ("consumer-0002", "running"),
    ]
    assert "allocation steady" in cluster["detail"]


def test_batchai_failed_cluster_exits_1_and_says_what_was_made(
    server: RecordingServer, batchai_env: dict[str, str]
) -> None:
    FakeBatchAI(server)
    server.route("PUT", "/clusters/gpu$", arm_error(409, "ClusterBeingDeleted", "cluster gpu is being deleted"))

    result = invoke(batchai_env, "launch", "--backend", "batchai", "--nodes", "2")

    assert result.exit_code == 1
    assert "error: creating Batch AI cluster gpu" in result.output
    assert "409" in result.output and "ClusterBeingDeleted: cluster gpu is being deleted" in result.output
    assert "already made: workspace ws; experiment workpool" in result.output
    assert_no_secret(result.output)


def test_batchai_without_a_subscription_exits_2(server: RecordingServer, batchai_env: dict[str, str]) -> None:
    del batchai_env["WORKPOOL_SUBSCRIPTION_ID"]

    result = invoke(batchai_env, "launch", "--backend", "batchai", "--nodes", "2")

    assert result.exit_code == 2
    assert "WORKPOOL_SUBSCRIPTION_ID" in result.output
    assert server.requests == []


def test_batchai_dry_run_masks_the_secret_environment(server: RecordingServer, batchai_env: dict[str, str]) -> None:
    result = invoke(batchai_env, "launch", "--backend", "batchai", "--nodes", "2", "--dry-run")

    assert result.exit_code == 0, result.output
    assert (
        "PUT /subscriptions/sub-1/resourceGroups/rg-pool/providers/Microsoft.BatchAI/workspaces/ws/clusters/gpu"
        in result.output
    )
    assert '"nodeCount": 1' in result.output and '"value": "***"' in result.output
    assert_no_secret(result.output)
    assert server.requests == []
