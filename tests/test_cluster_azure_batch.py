"""Azure Batch launcher, driven through the real azure-batch (and azure-mgmt-batch) SDKs against a
recording server with a stateful fake of the service (tests/support/fake_batch_pool.py), and
the real result store on Azurite for the wheel and bootstrap it ships: pool, job, one consumer
task per node, resizes that never race, exact scale-in, teardown, errors and secrets.

What a node then runs (the bootstrap, the consumer) is executed in tests/test_node_bootstrap.py
and, end to end, against the Batch emulator.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import urllib.request
import zipfile
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError
from urllib.parse import parse_qs, urlparse

import pytest

from orchestration.backends.azure_batch import AzureBatchLauncher
from orchestration.backends.azure_batch_checks import batch_scope
from tests.conftest import TEST_TASK_MODULES, unique
from tests.support.azurite import Azurite
from tests.support.fake_batch_pool import FakeBatchPool
from tests.support.recording_server import (
    BATCH_KEY,
    CONNECTION_STRING,
    SAS_TOKEN,
    SECRETS,
    FakeTokenCredential,
    RecordingServer,
    UnusableCredential,
    arm_error,
    batch_error,
    recording_server,
    reply,
)
from workpool.errors import NotFoundError, SettingsError, WorkpoolError
from workpool.settings import SCHEDULED_EVENTS_URL, Settings, load_settings
from workpool.storage import blob_store

IDENTITY = (
    "/subscriptions/sub-1/resourceGroups/rg-pool/providers/Microsoft.ManagedIdentity/userAssignedIdentities/scorer"
)
ARM_POOL = "/subscriptions/sub-1/resourceGroups/rg-pool/providers/Microsoft.Batch/batchAccounts/scoring/pools/gpu"
SIZE = "Standard_NC24ads_A100_v4"
WHEEL = "workpool-0.1.0-py3-none-any.whl"


def checks_then_runs_the_bootstrap(command_line: str, files: dict[str, bytes]) -> None:
    """The start task's command line checks each file's sha256 (of what was uploaded), then runs the bootstrap."""
    for name, content in files.items():
        assert f"{hashlib.sha256(content).hexdigest()}:{name}" in command_line
    assert command_line.startswith("/bin/bash -c ") and "sha256sum" in command_line
    assert command_line.endswith('exec /bin/bash "$AZ_BATCH_TASK_WORKING_DIR/workpool-bootstrap.sh"\'')


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with recording_server() as s:
        yield s


@pytest.fixture
def fake(server: RecordingServer) -> FakeBatchPool:
    return FakeBatchPool(server)


@pytest.fixture
def storage(azurite: Azurite) -> str:
    """The result store the wheel is uploaded to: Azurite's connection string."""
    return azurite.connection_string


def settings_for(server: RecordingServer, storage: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "batch_account_url": server.url,
        "batch_account_name": "scoring",
        "batch_account_key": BATCH_KEY,
        "pool": "gpu",
        "vm_size": SIZE,
        "cluster_poll_interval_s": 0,
        "queue": "images",
        "results": unique("scores"),
        "connection_string": storage or CONNECTION_STRING,
        # Keys stay home by default; these tests opt in (tests of the default unset it).
        "batch_share_storage_key": True,
    }
    values.update(overrides)
    return load_settings(**values)


def launcher(server: RecordingServer, storage: str | None = None, credential: Any = None, **overrides: Any) -> Any:
    return AzureBatchLauncher(settings_for(server, storage, **overrides), credential)


def identity_launcher(
    server: RecordingServer, storage: str | None = None, credential: Any = None, **overrides: Any
) -> AzureBatchLauncher:
    """Pool nodes with a user-assigned identity; Entra ID for both planes, no keys anywhere."""
    values: dict[str, Any] = {
        "batch_account_key": None,
        "managed_identity_id": IDENTITY,
        "managed_identity_client_id": "1111-2222",
        "subscription_id": "sub-1",
        "resource_group": "rg-pool",
        "arm_endpoint": server.url,
    }
    values.update(overrides)
    return AzureBatchLauncher(settings_for(server, storage, **values), credential or FakeTokenCredential())


def added_task_ids(server: RecordingServer) -> list[str]:
    return sorted(t["id"] for r in server.sent("POST", "/addtaskcollection$") for t in r.body["value"])


def non_get(server: RecordingServer) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in server.requests if r.method != "GET"]


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return bytes(answer.read())


# --- launch: what the nodes get -------------------------------------------------------------------
@pytest.mark.azurite
def test_launch_ships_this_wheel_and_the_bootstrap_as_read_only_resource_files(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    launcher(server, storage).launch(3)

    assert non_get(server) == [("POST", "/pools"), ("POST", "/jobs"), ("POST", "/jobs/workpool/addtaskcollection")]
    pool = server.sent("POST", "^/pools$")[0].body
    assert pool["id"] == "gpu" and pool["vmSize"] == SIZE
    assert pool["targetDedicatedNodes"] == 3 and pool["targetLowPriorityNodes"] == 0
    assert pool["taskSlotsPerNode"] == 1
    assert pool["virtualMachineConfiguration"] == {
        "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2404", "version": "latest"},
        "nodeAgentSKUId": "batch.node.ubuntu 24.04",
    }
    start = pool["startTask"]
    assert start["userIdentity"] == {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}
    assert start["waitForSuccess"] is True
    files = {f["filePath"]: f["httpUrl"] for f in start["resourceFiles"]}
    assert set(files) == {"workpool-bootstrap.sh", WHEEL, "workpool-constraints.txt"}
    checks_then_runs_the_bootstrap(start["commandLine"], {name: fetch(url) for name, url in files.items()})
    env = {e["name"]: e["value"] for e in start["environmentSettings"]}
    assert env == {
        "WORKPOOL_NODE_EXTRAS": "gpu",
        "WORKPOOL_NODE_WHEEL": WHEEL,
        "WORKPOOL_NODE_CONSTRAINTS": "workpool-constraints.txt",
        "WORKPOOL_VM_SIZE": SIZE,
    }
    # Not in the result container (every consumer can write there): in the node-files container.
    assert all(urlparse(url).path.split("/")[2] == "workpool-node-files" for url in files.values())
    pins = fetch(files["workpool-constraints.txt"]).decode()
    assert "\nkeras==3." in pins and "\ntensorflow==" in pins and "workpool==" not in pins

    # The links work, read the content-addressed blobs, and only read them.
    wheel_url = files["workpool-0.1.0-py3-none-any.whl"]
    path = urlparse(wheel_url).path
    assert "/wheels/" in path and path.endswith("/workpool-0.1.0-py3-none-any.whl")
    sas = parse_qs(urlparse(wheel_url).query)
    assert sas["sp"] == ["r"] and "se" in sas and "sig" in sas
    names = zipfile.ZipFile(io.BytesIO(fetch(wheel_url))).namelist()
    assert "orchestration/backends/azure_batch.py" in names and "orchestration/node/bootstrap.sh" in names
    assert fetch(files["workpool-bootstrap.sh"]).startswith(b"#!/usr/bin/env bash")
    upload = urllib.request.Request(wheel_url, data=b"x", method="PUT", headers={"x-ms-blob-type": "BlockBlob"})
    with pytest.raises(HTTPError) as refused:
        urllib.request.urlopen(upload, timeout=30)
    refused.value.close()
    assert refused.value.code == 403

    job = server.sent("POST", "^/jobs$")[0].body
    assert job["id"] == "workpool" and job["poolInfo"] == {"poolId": "gpu"}
    job_env = {e["name"]: e["value"] for e in job["commonEnvironmentSettings"]}
    assert job_env["WORKPOOL_QUEUE"] == "images" and job_env["WORKPOOL_RESULTS"].startswith("scores")

    assert added_task_ids(server) == ["consumer-0001", "consumer-0002", "consumer-0003"]
    for task in server.sent("POST", "/addtaskcollection$")[0].body["value"]:
        assert task["commandLine"] == (
            '/bin/bash -c \'exec "$AZ_BATCH_NODE_SHARED_DIR/workpool/venv/bin/consumer" '
            f"run --workers auto --worker-id {task['id']}'"
        )
        assert task["constraints"] == {"maxTaskRetryCount": 3}
    assert {r.authorization for r in server.requests} == {"SharedKey"}
    assert {r.query["api-version"] for r in server.requests} == {"2025-06-01"}


@pytest.mark.azurite
def test_a_second_launch_reuses_the_uploaded_wheel(server: RecordingServer, fake: FakeBatchPool, storage: str) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(1)
    first = server.sent("POST", "^/pools$")[0].body["startTask"]["resourceFiles"]
    AzureBatchLauncher(settings).teardown(delete=True)
    server.requests.clear()

    AzureBatchLauncher(settings).launch(1)

    second = server.sent("POST", "^/pools$")[0].body["startTask"]["resourceFiles"]
    assert [urlparse(f["httpUrl"]).path for f in first] == [urlparse(f["httpUrl"]).path for f in second]


@pytest.mark.azurite
def test_a_node_file_replaced_in_storage_is_put_back_by_the_next_launch(
    server: RecordingServer, fake: FakeBatchPool, storage: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(1)
    start = server.sent("POST", "^/pools$")[0].body["startTask"]
    wheel_url = next(f["httpUrl"] for f in start["resourceFiles"] if f["filePath"] == WHEEL)
    original = fetch(wheel_url)
    store = blob_store(settings, settings.node_files)
    name = urlparse(wheel_url).path.split("/", 3)[3]  # /<account>/<container>/<blob>
    store.write(name, original + b"tampered")
    AzureBatchLauncher(settings).teardown(delete=True)

    AzureBatchLauncher(settings).launch(1)

    assert store.read(name) == original
    assert f"{name} in the node-files container differs from this launch's" in caplog.text
    again = server.sent("POST", "^/pools$")[-1].body["startTask"]["commandLine"]
    assert f"{hashlib.sha256(original).hexdigest()}:{WHEEL}" in again


@pytest.mark.azurite
def test_spot_nodes_are_the_pools_preemptible_target_and_lowpriority_is_an_alias_that_warns(
    server: RecordingServer, fake: FakeBatchPool, storage: str, caplog: pytest.LogCaptureFixture
) -> None:
    launcher(server, storage, vm_priority="spot").launch(4)
    pool = server.sent("POST", "^/pools$")[0].body
    assert (pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"]) == (0, 4)
    assert "lowpriority" not in caplog.text

    fake.pools.clear()
    launcher(server, storage, vm_priority="lowpriority").launch(2)
    pool = server.sent("POST", "^/pools$")[-1].body
    assert (pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"]) == (0, 2)
    assert "WORKPOOL_VM_PRIORITY=lowpriority" in caplog.text and "Spot" in caplog.text


@pytest.mark.azurite
def test_a_refused_spot_pool_says_which_account_mode_spot_needs(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    server.route(
        "POST",
        "^/pools$",
        batch_error(403, "AccountLowPriorityCoreQuotaReached", "The account has no quota for low-priority cores."),
    )

    with pytest.raises(WorkpoolError) as error:
        launcher(server, storage, vm_priority="spot").launch(2)

    message = str(error.value)
    assert "AccountLowPriorityCoreQuotaReached" in message
    assert "Spot nodes need Spot vCPU quota" in message and "user-subscription mode" not in message


@pytest.mark.azurite
def test_a_large_launch_sends_the_tasks_in_collections_of_at_most_100(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    launcher(server, storage).launch(150)

    sizes = sorted(len(r.body["value"]) for r in server.sent("POST", "/addtaskcollection$"))
    assert sizes == [50, 100]
    assert len(set(added_task_ids(server))) == 150


@pytest.mark.azurite
def test_with_a_managed_identity_nodes_read_the_wheel_with_it_and_no_key_travels(
    server: RecordingServer, fake: FakeBatchPool, storage: str, azurite: Azurite
) -> None:
    credential = FakeTokenCredential()
    identity_launcher(server, storage, credential).launch(2)

    assert non_get(server)[0] == ("PUT", ARM_POOL)
    arm = server.sent("PUT", ARM_POOL)[0]
    assert arm.query["api-version"] == "2025-06-01"
    assert arm.body["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}}
    props = arm.body["properties"]
    assert props["scaleSettings"] == {"fixedScale": {"targetDedicatedNodes": 2, "targetLowPriorityNodes": 0}}
    config = props["deploymentConfiguration"]["virtualMachineConfiguration"]
    assert config["nodeAgentSkuId"] == "batch.node.ubuntu 24.04"
    assert props["startTask"]["userIdentity"] == {"autoUser": {"scope": "Pool", "elevationLevel": "Admin"}}
    for file in props["startTask"]["resourceFiles"]:
        assert file["identityReference"] == {"resourceId": IDENTITY}
        assert "?" not in file["httpUrl"]  # read with the identity: no SAS is made

    env = {e["name"]: e["value"] for e in server.sent("POST", "^/jobs$")[0].body["commonEnvironmentSettings"]}
    # The account URL comes from the connection string; the string itself stays home.
    assert env == {
        "WORKPOOL_QUEUE": "images",
        "WORKPOOL_RESULTS": env["WORKPOOL_RESULTS"],
        "WORKPOOL_ACCOUNT_URL": f"http://127.0.0.1:{azurite.blob_port}/devstoreaccount1",
        "WORKPOOL_SCHEDULED_EVENTS_URL": SCHEDULED_EVENTS_URL,  # nodes watch for their preemption
        "WORKPOOL_LOCAL_ROOTS": "none",  # nodes read no local path a message names (docs/security.md)
        "WORKPOOL_TASK_MODULES": TEST_TASK_MODULES,  # the tests' own task modules (tests/conftest.py)
        "WORKPOOL_VM_SIZE": SIZE,  # a GPU size: a node that shows no GPU refuses to score on its CPU
        "AZURE_CLIENT_ID": "1111-2222",
    }
    assert storage not in server.everything_sent()
    assert {r.authorization for r in server.requests} == {"Bearer"}
    assert set(credential.scopes) == {server.url + "/.default", "https://batch.core.windows.net//.default"}


def test_the_batch_sign_in_scope_follows_the_configured_cloud(server: RecordingServer) -> None:
    def scope(**values: Any) -> str:
        return batch_scope(settings_for(server, **values))

    assert scope() == "https://batch.core.windows.net//.default"
    assert scope(arm_endpoint="https://management.chinacloudapi.cn") == "https://batch.chinacloudapi.cn//.default"
    assert scope(arm_endpoint="https://management.usgovcloudapi.net") == (
        "https://batch.core.usgovcloudapi.net//.default"
    )
    assert scope(arm_endpoint="https://arm.stack.local", batch_scope="https://batch.stack/.default") == (
        "https://batch.stack/.default"
    )
    with pytest.raises(SettingsError, match="WORKPOOL_BATCH_SCOPE"):
        scope(arm_endpoint="https://arm.stack.local")


# --- scale: no race, exact scale-in -----------------------------------------------------------------
@pytest.mark.azurite
def test_launch_on_an_existing_pool_renews_the_start_task_then_resizes_and_adds_only_missing_tasks(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(2)
    server.requests.clear()

    AzureBatchLauncher(settings).launch(3)

    assert non_get(server) == [
        ("PATCH", "/pools/gpu"),
        ("POST", "/pools/gpu/resize"),
        ("POST", "/jobs/workpool/addtaskcollection"),
    ]
    patched = server.sent("PATCH", "/pools/gpu$")[0].body["startTask"]
    assert "sha256sum" in patched["commandLine"] and len(patched["resourceFiles"]) == 3
    assert added_task_ids(server) == ["consumer-0003"]


@pytest.mark.azurite
def test_scale_up_resizes_the_pool_then_adds_tasks(server: RecordingServer, fake: FakeBatchPool, storage: str) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(2)
    server.requests.clear()

    AzureBatchLauncher(settings).scale(5)

    assert non_get(server) == [
        ("PATCH", "/pools/gpu"),
        ("POST", "/pools/gpu/resize"),
        ("POST", "/jobs/workpool/addtaskcollection"),
    ]
    assert server.sent("POST", "/resize$")[0].body == {"targetDedicatedNodes": 5, "targetLowPriorityNodes": 0}
    assert added_task_ids(server) == ["consumer-0003", "consumer-0004", "consumer-0005"]


@pytest.mark.azurite
def test_scale_to_the_same_size_renews_the_start_tasks_links(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(2)
    first = server.sent("POST", "^/pools$")[0].body["startTask"]["resourceFiles"]
    server.requests.clear()

    AzureBatchLauncher(settings).scale(2)

    assert non_get(server) == [("PATCH", "/pools/gpu")]
    renewed = server.sent("PATCH", "/pools/gpu$")[0].body["startTask"]["resourceFiles"]
    assert [urlparse(f["httpUrl"]).path for f in renewed] == [urlparse(f["httpUrl"]).path for f in first]
    assert all(fetch(f["httpUrl"]) for f in renewed)


@pytest.mark.azurite
def test_scale_in_stops_the_newest_consumers_then_removes_exactly_their_nodes(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(3)
    kept = fake.node_of("workpool", "consumer-0001")
    leaving = {fake.node_of("workpool", "consumer-0003"), fake.node_of("workpool", "consumer-0002")}
    server.requests.clear()

    AzureBatchLauncher(settings).scale(1)

    assert non_get(server) == [
        ("POST", "/jobs/workpool/tasks/consumer-0003/terminate"),
        ("POST", "/jobs/workpool/tasks/consumer-0002/terminate"),
        ("POST", "/pools/gpu/removenodes"),
    ]
    removal = server.sent("POST", "/removenodes$")[0].body
    assert set(removal["nodeList"]) == leaving and removal["nodeDeallocationOption"] == "requeue"
    assert [n["id"] for n in fake.nodes["gpu"]] == [kept]
    assert fake.tasks["workpool"]["consumer-0001"]["state"] == "running"


@pytest.mark.azurite
def test_scale_in_while_the_pool_is_resizing_stops_that_resize_first_and_no_409_escapes(
    server: RecordingServer, storage: str
) -> None:
    fake = FakeBatchPool(server)
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(3)
    AzureBatchLauncher(settings).scale(4)
    fake.start_resizing("gpu", reads=1000)  # still resizing when the next command comes
    server.requests.clear()

    AzureBatchLauncher(settings).scale(2)

    sent = non_get(server)
    assert sent[:2] == [
        ("POST", "/jobs/workpool/tasks/consumer-0004/terminate"),
        ("POST", "/jobs/workpool/tasks/consumer-0003/terminate"),
    ]
    assert sent[2:] == [("POST", "/pools/gpu/stopresize"), ("POST", "/pools/gpu/removenodes")]
    assert len(fake.nodes["gpu"]) == 2


@pytest.mark.azurite
def test_a_409_from_a_resize_started_elsewhere_is_settled_and_retried(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(2)
    # Another shell's resize lands between our steady read and our resize.
    server.route(
        "POST",
        r"^/pools/(?P<pool>[^/]+)/resize$",
        batch_error(409, "PoolNotSteady", "The specified pool is not in a steady allocation state."),
        lambda request, m: fake._resize_nodes(request, m),
    )
    server.requests.clear()

    AzureBatchLauncher(settings).scale(3)

    assert [p for _, p in non_get(server)].count("/pools/gpu/resize") == 2
    assert len(fake.nodes["gpu"]) == 3 and added_task_ids(server) == ["consumer-0003"]


@pytest.mark.azurite
def test_scaling_a_pool_that_does_not_exist_says_so(server: RecordingServer, fake: FakeBatchPool, storage: str) -> None:
    with pytest.raises(NotFoundError, match="pool gpu does not exist: run `orchestration launch` first"):
        launcher(server, storage).scale(2)


# --- status, failures, teardown ---------------------------------------------------------------------
@pytest.mark.azurite
def test_status_shows_the_pool_its_nodes_and_the_consumer_tasks(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(3)
    kept = sorted(str(fake.node_of("workpool", t)) for t in ("consumer-0001", "consumer-0002"))
    AzureBatchLauncher(settings).scale(2)

    state = AzureBatchLauncher(settings).state()

    assert state.backend == "azure-batch" and state.target_nodes == 2
    assert state.detail.startswith("pool gpu: active, allocation steady, 2 dedicated + 0 spot nodes")
    assert "job workpool: 1 completed, 2 running" in state.detail
    assert sorted((n.id, n.state, n.detail) for n in state.nodes) == [(k, "running", "dedicated") for k in kept]


@pytest.mark.azurite
def test_a_failed_start_task_shows_in_status_with_its_stderr_and_is_the_pools_failure(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(2)
    assert AzureBatchLauncher(settings).failure() is None
    stderr = (
        "workpool-bootstrap: installing workpool-0.1.0-py3-none-any.whl with extras [gpu]\n"
        "ERROR: No matching distribution found for tensorflow[and-cuda]\n"
        "workpool-bootstrap: FAILED: pip could not install workpool-0.1.0-py3-none-any.whl[gpu]\n"
    )
    fake.fail_start_task("gpu", "tvm-0001", stderr)

    nodes = {n.id: n for n in AzureBatchLauncher(settings).state().nodes}
    assert nodes["tvm-0001"].state == "starttaskfailed"
    detail = nodes["tvm-0001"].detail
    assert "start task failed (exit code 1, usererror error FailureExitCode" in detail
    assert "No matching distribution found for tensorflow[and-cuda]" in detail
    assert "FAILED: pip could not install" in detail
    assert AzureBatchLauncher(settings).failure() is None  # tvm-0000 still works

    fake.fail_start_task("gpu", "tvm-0000", stderr)
    reason = AzureBatchLauncher(settings).failure()
    assert reason is not None and reason.startswith("all 2 node(s) failed: tvm-0000: ")
    assert "FAILED: pip could not install" in reason


@pytest.mark.azurite
def test_a_pool_that_settled_empty_with_a_resize_error_is_the_pools_failure_in_plain_words(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    settings = settings_for(server, storage, vm_priority="spot")
    AzureBatchLauncher(settings).launch(2)
    fake.nodes["gpu"] = []
    fake.pools["gpu"]["resizeErrors"] = [
        {"code": "AccountLowPriorityCoreQuotaReached", "message": "The Batch account's low-priority core quota is 0."}
    ]

    reason = AzureBatchLauncher(settings).failure()
    detail = AzureBatchLauncher(settings).state().detail

    assert reason is not None and reason.startswith("pool gpu has no nodes: AccountLowPriorityCoreQuotaReached")
    assert "Spot nodes need Spot vCPU quota" in reason and "since March 2026" in reason
    assert "resize error AccountLowPriorityCoreQuotaReached: The Batch account's low-priority core" in detail
    assert "Spot nodes need" in detail


@pytest.mark.azurite
def test_teardown_terminates_the_job_and_resizes_to_zero(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(2)
    server.requests.clear()

    AzureBatchLauncher(settings).teardown()

    assert non_get(server) == [("POST", "/jobs/workpool/terminate"), ("POST", "/pools/gpu/resize")]
    assert server.sent("POST", "/resize$")[0].body == {
        "targetDedicatedNodes": 0,
        "targetLowPriorityNodes": 0,
        "nodeDeallocationOption": "requeue",
    }
    assert fake.jobs["workpool"]["state"] == "completed" and fake.nodes["gpu"] == []


@pytest.mark.azurite
def test_teardown_right_after_launch_stops_the_resize_in_progress(server: RecordingServer, storage: str) -> None:
    fake = FakeBatchPool(server)
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(2)
    fake.start_resizing("gpu", reads=1000)  # the pool's first allocation is still going
    server.requests.clear()

    AzureBatchLauncher(settings).teardown()

    assert non_get(server) == [
        ("POST", "/jobs/workpool/terminate"),
        ("POST", "/pools/gpu/stopresize"),
        ("POST", "/pools/gpu/resize"),
    ]
    assert fake.pools["gpu"]["targetDedicatedNodes"] == 0


@pytest.mark.azurite
def test_teardown_deletes_the_pool_when_it_cannot_be_resized_to_zero(
    server: RecordingServer, fake: FakeBatchPool, storage: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(2)
    server.route(
        "POST",
        "^/pools/gpu/resize$",
        batch_error(409, "PoolNotSteady", "The pool is not in a steady allocation state."),
    )
    server.requests.clear()

    AzureBatchLauncher(settings).teardown()

    assert non_get(server)[-1] == ("DELETE", "/pools/gpu")
    assert "gpu" not in fake.pools
    assert "could not resize pool gpu to 0" in caplog.text and "deleting the pool instead" in caplog.text


@pytest.mark.azurite
def test_a_launch_after_teardown_replaces_the_finished_job(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(2)
    AzureBatchLauncher(settings).teardown()
    server.requests.clear()

    AzureBatchLauncher(settings).launch(2)

    assert non_get(server) == [
        ("PATCH", "/pools/gpu"),
        ("POST", "/pools/gpu/resize"),
        ("DELETE", "/jobs/workpool"),
        ("POST", "/jobs"),
        ("POST", "/jobs/workpool/addtaskcollection"),
    ]
    assert fake.jobs["workpool"]["state"] == "active"


@pytest.mark.azurite
def test_a_launch_right_after_teardown_delete_waits_for_the_old_pool_to_go(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(2)
    fake.delete_reads = 20  # deleting a pool takes a while (the SDK's poller reads it too, once a second)
    AzureBatchLauncher(settings).teardown(delete=True)
    assert fake.pools["gpu"]["state"] == "deleting"
    server.requests.clear()

    AzureBatchLauncher(settings).launch(2)

    assert [p for m, p in non_get(server)] == ["/pools", "/jobs", "/jobs/workpool/addtaskcollection"]
    assert fake.pools["gpu"]["state"] == "active" and len(fake.nodes["gpu"]) == 2


@pytest.mark.azurite
def test_teardown_with_delete_removes_job_and_pool(server: RecordingServer, fake: FakeBatchPool, storage: str) -> None:
    settings = settings_for(server, storage)
    AzureBatchLauncher(settings).launch(2)
    server.requests.clear()

    AzureBatchLauncher(settings).teardown(delete=True)

    assert non_get(server) == [
        ("POST", "/jobs/workpool/terminate"),
        ("DELETE", "/jobs/workpool"),
        ("DELETE", "/pools/gpu"),
    ]
    assert fake.pools == {} and fake.jobs == {}


# --- errors ----------------------------------------------------------------------------------------
@pytest.mark.azurite
@pytest.mark.parametrize(
    ("status", "code", "text"),
    [
        (400, "InvalidPropertyValue", "The value provided for vmSize is invalid."),
        (403, "InsufficientAccountQuota", "The account has insufficient quota for 3 dedicated nodes."),
        (409, "PoolBeingDeleted", "The specified pool has been marked for deletion."),
    ],
)
def test_a_refused_pool_is_one_clear_message_and_nothing_else_is_sent(
    server: RecordingServer, fake: FakeBatchPool, storage: str, status: int, code: str, text: str
) -> None:
    server.route("POST", "^/pools$", batch_error(status, code, text))

    with pytest.raises(WorkpoolError) as error:
        launcher(server, storage).launch(3)

    message = str(error.value)
    assert message.startswith(f"creating Azure Batch pool gpu (3 × {SIZE}, dedicated) failed: ")
    assert f"{status} " in message and f"{code}: {text}" in message
    assert "already made: uploaded wheels/" in message  # the wheel, in the result store
    assert non_get(server) == [("POST", "/pools")]


@pytest.mark.azurite
def test_a_refused_job_says_the_pool_was_already_made(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    server.route("POST", "^/jobs$", batch_error(403, "Forbidden", "Server failed to authorize the request."))

    with pytest.raises(WorkpoolError) as error:
        launcher(server, storage).launch(2)

    message = str(error.value)
    assert message.startswith("creating Azure Batch job workpool on pool gpu failed: 403")
    assert "pool gpu with 2 nodes" in message
    assert "orchestration teardown --backend azure-batch --delete" in message


@pytest.mark.azurite
def test_task_results_are_read_as_the_sdk_defines_them(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    # TaskExists is a success (a retried request that had landed); other client errors are
    # refusals, reported with their codes and messages.
    answer = {
        "value": [
            {"status": "success", "taskId": "consumer-0001"},
            {
                "status": "clienterror",
                "taskId": "consumer-0002",
                "error": {"code": "TaskExists", "message": {"value": "The specified task already exists."}},
            },
            {
                "status": "clienterror",
                "taskId": "consumer-0003",
                "error": {"code": "InvalidPropertyValue", "message": {"value": "The command line is too long."}},
            },
        ]
    }
    server.route("POST", "/addtaskcollection$", reply(200, answer))

    with pytest.raises(WorkpoolError) as error:
        launcher(server, storage).launch(3)

    message = str(error.value)
    assert "1 refused (consumer-0003: InvalidPropertyValue The command line is too long.)" in message
    assert "2 of 3 added" in message
    assert "TaskExists" not in message


@pytest.mark.parametrize("missing", ["batch_account_url", "pool", "vm_size"])
def test_missing_batch_settings_are_named_before_anything_is_sent(server: RecordingServer, missing: str) -> None:
    with pytest.raises(SettingsError, match=f"WORKPOOL_{missing.upper()}"):
        launcher(server, **{missing: None}).launch(1)
    assert server.requests == []


@pytest.mark.parametrize(
    ("size", "successor"),
    [
        ("STANDARD_NC6", "Standard_NC4as_T4_v3"),
        ("Standard_NC12s_v2", "Standard_NC4as_T4_v3"),
        ("Standard_NC6s_v3", "Standard_NC24ads_A100_v4"),
        ("STANDARD_NC24RS_V3", "Standard_NC40ads_H100_v5"),
        ("Standard_ND24s", "Standard_NC24ads_A100_v4"),
        ("Standard_NV12", "Standard_NC4as_T4_v3"),
        ("Standard_NV12s_v3", "Standard_NV36ads_A10_v5"),
        ("standard_nv32as_v4", "Standard_NC4as_T4_v3"),
    ],
)
def test_a_retired_size_is_refused_naming_a_current_successor(
    server: RecordingServer, size: str, successor: str
) -> None:
    with pytest.raises(SettingsError) as error:
        launcher(server, vm_size=size).describe(1)
    assert f"setting WORKPOOL_VM_SIZE: {size} belongs to the" in str(error.value)
    assert "retired by Azure on" in str(error.value) and successor in str(error.value)
    assert server.requests == []


@pytest.mark.azurite
def test_an_identity_pool_needs_subscription_and_resource_group(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    with pytest.raises(SettingsError, match="WORKPOOL_SUBSCRIPTION_ID"):
        identity_launcher(server, storage, subscription_id=None).launch(1)
    assert non_get(server) == []


def test_an_identity_pool_needs_to_know_the_storage_account(server: RecordingServer) -> None:
    with pytest.raises(SettingsError, match="WORKPOOL_ACCOUNT_URL"):
        identity_launcher(server, connection_string="UseDevelopmentStorage=true").describe(1)


@pytest.mark.azurite
def test_an_identity_pool_refused_by_resource_manager_is_a_clear_error(
    server: RecordingServer, fake: FakeBatchPool, storage: str
) -> None:
    server.route("PUT", ARM_POOL, arm_error(403, "AuthorizationFailed", "no write access to batchAccounts/pools"))

    with pytest.raises(WorkpoolError) as error:
        identity_launcher(server, storage).launch(2)

    message = str(error.value)
    assert message.startswith(f"creating Azure Batch pool gpu (2 × {SIZE}, dedicated) failed: 403")
    assert "AuthorizationFailed: no write access to batchAccounts/pools" in message
    assert non_get(server) == [("PUT", ARM_POOL)]


# --- dry run and secrets -------------------------------------------------------------------------
def test_describe_needs_no_credentials_shows_the_resource_files_and_masks_every_secret(
    server: RecordingServer,
) -> None:
    plan = AzureBatchLauncher(settings_for(server, batch_account_key=None), UnusableCredential()).describe(2)

    assert [(p.method, p.path) for p in plan] == [
        ("POST", "/pools?api-version=2025-06-01"),
        ("POST", "/jobs?api-version=2025-06-01"),
        ("POST", "/jobs/workpool/addtaskcollection?api-version=2025-06-01"),
    ]
    start = plan[0].body["startTask"]
    files = {f["filePath"]: f["httpUrl"] for f in start["resourceFiles"]}
    assert set(files) == {"workpool-bootstrap.sh", WHEEL, "workpool-constraints.txt"}
    for url in files.values():
        assert url.startswith("https://imagesacct.blob.core.windows.net/") and url.endswith("?***")
    assert plan[0].body["vmSize"] == SIZE
    env = {e["name"]: e["value"] for e in plan[1].body["commonEnvironmentSettings"]}
    assert env["AZURE_STORAGE_CONNECTION_STRING"] == "***"
    assert [t["id"] for t in plan[2].body["value"]] == ["consumer-0001", "consumer-0002"]
    assert not [s for s in SECRETS if s in json.dumps([p.__dict__ for p in plan])]
    assert "WORKPOOL_NODE_PACKAGE" not in json.dumps([p.__dict__ for p in plan])
    assert server.requests == []


def test_describe_a_container_pool_runs_the_image_with_the_gpus(server: RecordingServer) -> None:
    image = "scoringacr.azurecr.io/workpool:0.1.0"
    plan = identity_launcher(server, None, UnusableCredential(), node_image=image).describe(1)

    props = plan[0].body["properties"]
    config = props["deploymentConfiguration"]["virtualMachineConfiguration"]
    assert config["containerConfiguration"] == {
        "type": "DockerCompatible",
        "containerImageNames": [image],
        "containerRegistries": [
            {"registryServer": "scoringacr.azurecr.io", "identityReference": {"resourceId": IDENTITY}}
        ],
    }
    assert "startTask" not in props  # the image holds everything: nothing to install
    task = plan[2].body["value"][0]
    assert task["containerSettings"]["imageName"] == image
    assert "containerRunOptions" not in task["containerSettings"]  # Batch gives container tasks the GPUs
    assert task["commandLine"] == "/opt/workpool/venv/bin/consumer run --workers auto --worker-id consumer-0001"
    assert server.requests == []


def test_describe_a_container_pool_without_identity(server: RecordingServer) -> None:
    image = "docker.io/me/workpool:0.1.0"
    plan = launcher(server, node_image=image, batch_account_key=None).describe(1)

    config = plan[0].body["virtualMachineConfiguration"]
    assert config["containerConfiguration"]["containerImageNames"] == [image]
    assert "startTask" not in plan[0].body
    assert "containerRunOptions" not in plan[2].body["value"][0]["containerSettings"]
    assert not [s for s in SECRETS if s in json.dumps([p.__dict__ for p in plan])]


def test_a_package_override_is_masked_in_the_dry_run_and_replaces_the_wheel(server: RecordingServer) -> None:
    wheel = "https://pkgs.blob.core.windows.net/wheels/workpool-0.1.0-py3-none-any.whl?sv=2022&sig=d2hlZWwtc2ln"

    plan = launcher(server, node_package=wheel).describe(1)

    start = plan[0].body["startTask"]
    env = {e["name"]: e["value"] for e in start["environmentSettings"]}
    assert env["WORKPOOL_NODE_PACKAGE"] == wheel.split("?")[0] + "?***"
    assert "WORKPOOL_NODE_WHEEL" not in env
    assert [f["filePath"] for f in start["resourceFiles"]] == ["workpool-bootstrap.sh", "workpool-constraints.txt"]
    assert "d2hlZWwtc2ln" not in json.dumps([p.__dict__ for p in plan])


@pytest.mark.azurite
def test_without_an_identity_keys_travel_only_in_the_job_environment_with_a_warning(
    server: RecordingServer, fake: FakeBatchPool, storage: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_for(server, storage)
    secrets = [*settings.secret_values(), BATCH_KEY]
    with_key = AzureBatchLauncher(settings)
    with_key.launch(2)
    with_key.scale(3)
    with_key.state()
    with_key.teardown(delete=True)

    for request in server.requests:
        body = request.body if isinstance(request.body, dict) else {}
        other = dict(body)
        other.pop("commonEnvironmentSettings", None)
        for secret in secrets:
            assert secret not in json.dumps(other)
            assert secret not in request.path and secret not in json.dumps(request.headers)
    job_env = {e["name"]: e["value"] for e in server.sent("POST", "^/jobs$")[0].body["commonEnvironmentSettings"]}
    assert job_env["AZURE_STORAGE_CONNECTION_STRING"] == storage
    assert BATCH_KEY not in server.everything_sent()
    assert "travels to the nodes in the job's environment" in caplog.text and "Batch Account Reader" in caplog.text
    assert not [s for s in secrets if s in caplog.text]


def test_a_sas_token_alone_cannot_sign_the_wheel_link_and_says_what_to_do(server: RecordingServer) -> None:
    settings = settings_for(
        server, connection_string=None, account_url="https://imagesacct.blob.core.windows.net", sas_token=SAS_TOKEN
    )
    from orchestration.wheel import _read_sas

    with pytest.raises(SettingsError) as error:
        _read_sas(settings, "wheels/x/workpool-0.1.0-py3-none-any.whl")
    assert "WORKPOOL_MANAGED_IDENTITY_ID" in str(error.value) and SAS_TOKEN not in str(error.value)


# --- keys stay home, checks shared by launch and dry run -----------------------------------------------
@pytest.mark.parametrize("dry_run", [False, True])
def test_without_an_identity_no_storage_key_goes_into_the_job_unless_the_user_opts_in(
    server: RecordingServer, dry_run: bool
) -> None:
    chosen = launcher(server, batch_share_storage_key=False)

    with pytest.raises(SettingsError) as refused:
        chosen.describe(1) if dry_run else chosen.launch(1)

    message = str(refused.value)
    assert "WORKPOOL_MANAGED_IDENTITY_ID" in message and "WORKPOOL_BATCH_SHARE_STORAGE_KEY=true" in message
    assert "Batch Account Reader" in message
    assert server.requests == []


@pytest.mark.parametrize("dry_run", [False, True])
def test_an_identity_pool_without_subscription_or_resource_group_is_refused_by_the_dry_run_too(
    server: RecordingServer, dry_run: bool
) -> None:
    chosen = identity_launcher(server, None, UnusableCredential(), subscription_id=None, resource_group=None)

    with pytest.raises(SettingsError) as refused:
        chosen.describe(1) if dry_run else chosen.launch(1)

    assert "WORKPOOL_SUBSCRIPTION_ID" in str(refused.value) and "WORKPOOL_RESOURCE_GROUP" in str(refused.value)
    assert server.requests == []


def test_the_dry_run_warns_as_launch_does(server: RecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    launcher(server).describe(1)

    assert "travels to the nodes in the job's environment" in caplog.text
    assert "links valid for 24 h" in caplog.text and "use an identity" in caplog.text


def test_shared_key_auth_is_refused_for_a_user_subscription_account(server: RecordingServer) -> None:
    chosen = launcher(server, batch_pool_allocation="usersubscription")

    for attempt in (lambda: chosen.describe(1), lambda: chosen.launch(1), chosen.state):
        with pytest.raises(SettingsError) as refused:
            attempt()
        assert "WORKPOOL_BATCH_ACCOUNT_KEY" in str(refused.value) and "Microsoft Entra ID" in str(refused.value)
    assert server.requests == []


def test_spot_on_a_batch_service_account_uses_the_low_priority_fields(server: RecordingServer) -> None:
    plan = identity_launcher(server, None, UnusableCredential(), vm_priority="spot").describe(2)

    scale = plan[0].body["properties"]["scaleSettings"]["fixedScale"]
    assert (scale["targetDedicatedNodes"], scale["targetLowPriorityNodes"]) == (0, 2)


def test_a_container_pool_gets_an_os_disk_its_image_fits_on(server: RecordingServer) -> None:
    image = "scoringacr.azurecr.io/workpool:0.1.0"

    default = identity_launcher(server, None, UnusableCredential(), node_image=image).describe(1)
    chosen = identity_launcher(server, None, UnusableCredential(), node_image=image, node_os_disk_gb=256).describe(1)
    plain = identity_launcher(server, None, UnusableCredential()).describe(1)

    def disk(plan: list[Any]) -> Any:
        return plan[0].body["properties"]["deploymentConfiguration"]["virtualMachineConfiguration"].get("osDisk")

    assert disk(default) == {"diskSizeGB": 128} and disk(chosen) == {"diskSizeGB": 256}
    assert disk(plain) is None  # a start-task pool keeps the image's own disk
