"""Azure Batch launcher, driven through the real azure-batch (and azure-mgmt-batch) SDKs against a
recording server: pool, job, one consumer task per node, resize, teardown, errors and secrets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from orchestration.backends.azure_batch import AzureBatchLauncher
from tests.support.recording_server import (
    BATCH_KEY,
    CONNECTION_STRING,
    SAS_TOKEN,
    SECRETS,
    FakeBatch,
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

IDENTITY = (
    "/subscriptions/sub-1/resourceGroups/rg-pool/providers/Microsoft.ManagedIdentity/userAssignedIdentities/scorer"
)
ARM_POOL = "/subscriptions/sub-1/resourceGroups/rg-pool/providers/Microsoft.Batch/batchAccounts/scoring/pools/gpu"


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with recording_server() as s:
        yield s


@pytest.fixture
def fake(server: RecordingServer) -> FakeBatch:
    return FakeBatch(server)


def settings_for(server: RecordingServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "batch_account_url": server.url,
        "batch_account_name": "scoring",
        "batch_account_key": BATCH_KEY,
        "pool": "gpu",
        "vm_size": "STANDARD_NC6S_V3",
        "cluster_poll_interval_s": 0,
        "queue": "images",
        "results": "scores",
        "connection_string": CONNECTION_STRING,
    }
    values.update(overrides)
    return load_settings(**values)


def launcher(server: RecordingServer, credential: Any = None, **overrides: Any) -> AzureBatchLauncher:
    return AzureBatchLauncher(settings_for(server, **overrides), credential)


def identity_launcher(server: RecordingServer, credential: Any = None, **overrides: Any) -> AzureBatchLauncher:
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
    return launcher(server, credential or FakeTokenCredential(), **values)


def added_task_ids(server: RecordingServer) -> list[str]:
    return sorted(t["id"] for r in server.sent("POST", "/addtaskcollection$") for t in r.body["value"])


def non_get(server: RecordingServer) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in server.requests if r.method != "GET"]


# --- launch ---------------------------------------------------------------------------------------
def test_launch_creates_a_gpu_pool_a_job_and_one_consumer_task_per_node(
    server: RecordingServer, fake: FakeBatch
) -> None:
    launcher(server).launch(3)

    assert non_get(server) == [("POST", "/pools"), ("POST", "/jobs"), ("POST", "/jobs/workpool/addtaskcollection")]
    pool = server.sent("POST", "^/pools$")[0].body
    assert pool["id"] == "gpu" and pool["vmSize"] == "STANDARD_NC6S_V3"
    assert pool["targetDedicatedNodes"] == 3 and pool["targetLowPriorityNodes"] == 0
    assert pool["taskSlotsPerNode"] == 1
    assert pool["virtualMachineConfiguration"] == {
        "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "latest"},
        "nodeAgentSKUId": "batch.node.ubuntu 22.04",
    }
    start = pool["startTask"]
    assert 'pip install "$WORKPOOL_NODE_PACKAGE"' in start["commandLine"]
    assert start["environmentSettings"] == [{"name": "WORKPOOL_NODE_PACKAGE", "value": "workpool"}]
    assert start["userIdentity"] == {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}
    assert start["waitForSuccess"] is True

    job = server.sent("POST", "^/jobs$")[0].body
    assert job["id"] == "workpool" and job["poolInfo"] == {"poolId": "gpu"}
    env = {e["name"]: e["value"] for e in job["commonEnvironmentSettings"]}
    assert env["WORKPOOL_QUEUE"] == "images" and env["WORKPOOL_RESULTS"] == "scores"

    assert added_task_ids(server) == ["consumer-0001", "consumer-0002", "consumer-0003"]
    for task in server.sent("POST", "/addtaskcollection$")[0].body["value"]:
        assert f"consumer run --workers auto --worker-id {task['id']}" in task["commandLine"]
        assert task["constraints"] == {"maxTaskRetryCount": 3}
    assert {r.authorization for r in server.requests} == {"SharedKey"}
    assert {r.query["api-version"] for r in server.requests} == {"2025-06-01"}


def test_low_priority_nodes_are_asked_for_as_low_priority_targets(server: RecordingServer, fake: FakeBatch) -> None:
    launcher(server, vm_priority="lowpriority").launch(4)

    pool = server.sent("POST", "^/pools$")[0].body
    assert (pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"]) == (0, 4)


def test_a_large_launch_sends_the_tasks_in_collections_of_at_most_100(server: RecordingServer, fake: FakeBatch) -> None:
    launcher(server).launch(150)

    sizes = sorted(len(r.body["value"]) for r in server.sent("POST", "/addtaskcollection$"))
    assert sizes == [50, 100]
    assert len(set(added_task_ids(server))) == 150


def test_with_a_managed_identity_the_pool_is_made_through_arm_and_no_key_travels(
    server: RecordingServer, fake: FakeBatch
) -> None:
    credential = FakeTokenCredential()
    identity_launcher(server, credential, sas_token=SAS_TOKEN).launch(2)

    assert non_get(server)[0] == ("PUT", ARM_POOL)
    arm = server.sent("PUT", ARM_POOL)[0]
    assert arm.query["api-version"] == "2025-06-01"
    assert arm.body["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}}
    props = arm.body["properties"]
    assert props["scaleSettings"] == {"fixedScale": {"targetDedicatedNodes": 2, "targetLowPriorityNodes": 0}}
    assert (
        props["deploymentConfiguration"]["virtualMachineConfiguration"]["nodeAgentSkuId"] == "batch.node.ubuntu 22.04"
    )
    assert props["startTask"]["userIdentity"] == {"autoUser": {"scope": "Pool", "elevationLevel": "Admin"}}

    env = {e["name"]: e["value"] for e in server.sent("POST", "^/jobs$")[0].body["commonEnvironmentSettings"]}
    # The account URL comes from the connection string; the string itself stays home.
    assert env == {
        "WORKPOOL_QUEUE": "images",
        "WORKPOOL_RESULTS": "scores",
        "WORKPOOL_ACCOUNT_URL": "https://imagesacct.blob.core.windows.net",
        "WORKPOOL_SCHEDULED_EVENTS_URL": SCHEDULED_EVENTS_URL,  # nodes watch for their preemption
        "AZURE_CLIENT_ID": "1111-2222",
    }
    assert not [s for s in SECRETS if s in server.everything_sent()]
    assert {r.authorization for r in server.requests} == {"Bearer"}
    assert set(credential.scopes) == {server.url + "/.default", "https://batch.core.windows.net//.default"}


def test_launch_on_an_existing_pool_resizes_it_and_adds_only_missing_tasks(
    server: RecordingServer, fake: FakeBatch
) -> None:
    launcher(server).launch(2)
    server.requests.clear()

    launcher(server).launch(3)

    assert non_get(server) == [("POST", "/pools/gpu/resize"), ("POST", "/jobs/workpool/addtaskcollection")]
    assert added_task_ids(server) == ["consumer-0003"]


# --- scale, status, teardown -------------------------------------------------------------------------
def test_scale_up_resizes_the_pool_then_adds_tasks(server: RecordingServer, fake: FakeBatch) -> None:
    launcher(server).launch(2)
    server.requests.clear()

    launcher(server).scale(5)

    assert non_get(server) == [("POST", "/pools/gpu/resize"), ("POST", "/jobs/workpool/addtaskcollection")]
    assert server.sent("POST", "/resize$")[0].body == {
        "targetDedicatedNodes": 5,
        "targetLowPriorityNodes": 0,
        "nodeDeallocationOption": "taskcompletion",
    }
    assert added_task_ids(server) == ["consumer-0003", "consumer-0004", "consumer-0005"]


def test_scale_down_terminates_the_newest_tasks_then_shrinks_the_pool(server: RecordingServer, fake: FakeBatch) -> None:
    launcher(server).launch(3)
    server.requests.clear()

    launcher(server).scale(1)

    assert non_get(server) == [
        ("POST", "/jobs/workpool/tasks/consumer-0003/terminate"),
        ("POST", "/jobs/workpool/tasks/consumer-0002/terminate"),
        ("POST", "/pools/gpu/resize"),
    ]
    assert server.sent("POST", "/resize$")[0].body["targetDedicatedNodes"] == 1


def test_scaling_a_pool_that_does_not_exist_says_so(server: RecordingServer, fake: FakeBatch) -> None:
    with pytest.raises(NotFoundError, match="pool gpu does not exist: run `orchestration launch` first"):
        launcher(server).scale(2)


def test_status_shows_the_pool_its_nodes_and_the_consumer_tasks(server: RecordingServer, fake: FakeBatch) -> None:
    launcher(server).launch(3)
    launcher(server).scale(2)

    state = launcher(server).state()

    assert state.backend == "azure-batch" and state.target_nodes == 2
    assert state.detail.startswith("pool gpu: active, allocation steady, 2 dedicated + 0 low-priority nodes")
    assert "job workpool: 1 completed, 2 running" in state.detail
    assert [(n.id, n.state, n.detail) for n in state.nodes] == [
        ("tvm-0000", "running", "dedicated"),
        ("tvm-0001", "running", "dedicated"),
    ]


def test_teardown_terminates_the_job_and_resizes_to_zero(server: RecordingServer, fake: FakeBatch) -> None:
    launcher(server).launch(2)
    server.requests.clear()

    launcher(server).teardown()

    assert non_get(server) == [("POST", "/jobs/workpool/terminate"), ("POST", "/pools/gpu/resize")]
    assert server.sent("POST", "/resize$")[0].body["targetDedicatedNodes"] == 0
    assert fake.jobs["workpool"]["state"] == "completed"


def test_a_launch_after_teardown_replaces_the_finished_job(server: RecordingServer, fake: FakeBatch) -> None:
    launcher(server).launch(2)
    launcher(server).teardown()
    server.requests.clear()

    launcher(server).launch(2)

    assert non_get(server) == [
        ("POST", "/pools/gpu/resize"),
        ("DELETE", "/jobs/workpool"),
        ("POST", "/jobs"),
        ("POST", "/jobs/workpool/addtaskcollection"),
    ]
    assert fake.jobs["workpool"]["state"] == "active"


def test_teardown_with_delete_removes_job_and_pool(server: RecordingServer, fake: FakeBatch) -> None:
    launcher(server).launch(2)
    server.requests.clear()

    launcher(server).teardown(delete=True)

    assert non_get(server) == [
        ("POST", "/jobs/workpool/terminate"),
        ("DELETE", "/jobs/workpool"),
        ("DELETE", "/pools/gpu"),
    ]
    assert fake.pools == {} and fake.jobs == {}


# --- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "code", "text"),
    [
        (400, "InvalidPropertyValue", "The value provided for vmSize is invalid."),
        (403, "InsufficientAccountQuota", "The account has insufficient quota for 3 dedicated nodes."),
        (409, "PoolBeingDeleted", "The specified pool has been marked for deletion."),
    ],
)
def test_a_refused_pool_is_one_clear_message_and_nothing_else_is_sent(
    server: RecordingServer, fake: FakeBatch, status: int, code: str, text: str
) -> None:
    server.route("POST", "^/pools$", batch_error(status, code, text))

    with pytest.raises(WorkpoolError) as error:
        launcher(server).launch(3)

    message = str(error.value)
    assert message.startswith("creating Azure Batch pool gpu (3 × STANDARD_NC6S_V3, dedicated) failed: ")
    assert f"{status} " in message and f"{code}: {text}" in message
    assert message.endswith("nothing was created")
    assert non_get(server) == [("POST", "/pools")]


def test_a_refused_job_says_the_pool_was_already_made(server: RecordingServer, fake: FakeBatch) -> None:
    server.route("POST", "^/jobs$", batch_error(403, "Forbidden", "Server failed to authorize the request."))

    with pytest.raises(WorkpoolError) as error:
        launcher(server).launch(2)

    message = str(error.value)
    assert message.startswith("creating Azure Batch job workpool on pool gpu failed: 403")
    assert "already made: pool gpu with 2 nodes" in message
    assert "orchestration teardown --backend azure-batch --delete" in message


def test_tasks_refused_inside_a_successful_collection_are_reported(server: RecordingServer, fake: FakeBatch) -> None:
    refused = {
        "value": [
            {"status": "success", "taskId": "consumer-0001"},
            {
                "status": "clienterror",
                "taskId": "consumer-0002",
                "error": {"code": "TaskExists", "message": {"value": "The specified task already exists."}},
            },
        ]
    }
    server.route("POST", "/addtaskcollection$", reply(200, refused))

    with pytest.raises(WorkpoolError) as error:
        launcher(server).launch(2)

    message = str(error.value)
    assert "1 tasks were refused (consumer-0002: TaskExists The specified task already exists.)" in message
    assert "1 consumer tasks (consumer-0001…)" in message


@pytest.mark.parametrize("missing", ["batch_account_url", "pool"])
def test_missing_batch_settings_are_named_before_anything_is_sent(server: RecordingServer, missing: str) -> None:
    with pytest.raises(SettingsError, match=f"WORKPOOL_{missing.upper()}"):
        launcher(server, **{missing: None}).launch(1)
    assert server.requests == []


def test_an_identity_pool_needs_subscription_and_resource_group(server: RecordingServer, fake: FakeBatch) -> None:
    with pytest.raises(SettingsError, match="WORKPOOL_SUBSCRIPTION_ID"):
        identity_launcher(server, subscription_id=None).launch(1)
    assert non_get(server) == []


def test_an_identity_pool_needs_to_know_the_storage_account(server: RecordingServer) -> None:
    with pytest.raises(SettingsError, match="WORKPOOL_ACCOUNT_URL"):
        identity_launcher(server, connection_string="UseDevelopmentStorage=true").describe(1)


# --- dry run and secrets -------------------------------------------------------------------------
def test_describe_needs_no_credentials_and_masks_every_secret(server: RecordingServer) -> None:
    plan = AzureBatchLauncher(
        settings_for(
            server, batch_account_key=None, sas_token=SAS_TOKEN, account_url="https://imagesacct.blob.core.windows.net"
        ),
        UnusableCredential(),
    ).describe(2)

    assert [(p.method, p.path) for p in plan] == [
        ("POST", "/pools?api-version=2025-06-01"),
        ("POST", "/jobs?api-version=2025-06-01"),
        ("POST", "/jobs/workpool/addtaskcollection?api-version=2025-06-01"),
    ]
    env = {e["name"]: e["value"] for e in plan[1].body["commonEnvironmentSettings"]}
    assert env["AZURE_STORAGE_CONNECTION_STRING"] == "***" and env["WORKPOOL_SAS_TOKEN"] == "***"
    assert [t["id"] for t in plan[2].body["value"]] == ["consumer-0001", "consumer-0002"]
    assert not [s for s in SECRETS if s in json.dumps([p.__dict__ for p in plan])]
    assert server.requests == []


def test_describe_with_an_identity_shows_the_arm_pool_request(server: RecordingServer) -> None:
    plan = identity_launcher(server, UnusableCredential()).describe(1)

    assert plan[0].method == "PUT" and plan[0].path == ARM_POOL + "?api-version=2025-06-01"
    assert plan[0].body["identity"]["userAssignedIdentities"] == {IDENTITY: {}}
    assert server.requests == []


def test_without_an_identity_keys_travel_only_in_the_job_environment_with_a_warning(
    server: RecordingServer, fake: FakeBatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with_sas = launcher(server, sas_token=SAS_TOKEN, account_url="https://imagesacct.blob.core.windows.net")
    with_sas.launch(2)
    with_sas.scale(3)
    with_sas.state()
    with_sas.teardown(delete=True)

    for request in server.requests:
        body = request.body if isinstance(request.body, dict) else {}
        lines = [body.get("commandLine", ""), body.get("startTask", {}).get("commandLine", "")]
        lines += [t.get("commandLine", "") for t in body.get("value", []) if isinstance(t, dict)]
        other = dict(body)
        other.pop("commonEnvironmentSettings", None)
        for secret in SECRETS:
            assert all(secret not in line for line in lines)
            assert secret not in json.dumps(other)
            assert secret not in request.path and secret not in json.dumps(request.headers)
    job_env = {e["name"]: e["value"] for e in server.sent("POST", "^/jobs$")[0].body["commonEnvironmentSettings"]}
    assert job_env["AZURE_STORAGE_CONNECTION_STRING"] == CONNECTION_STRING
    assert BATCH_KEY not in server.everything_sent()
    assert "travels to the nodes in the job's environment" in caplog.text
    assert not [s for s in SECRETS if s in caplog.text]


def test_a_package_url_with_a_sas_is_masked_in_the_dry_run_but_sent_to_the_start_task(
    server: RecordingServer, fake: FakeBatch
) -> None:
    wheel = "https://pkgs.blob.core.windows.net/wheels/workpool-0.1.0-py3-none-any.whl?sv=2022&sig=d2hlZWwtc2ln"

    plan = launcher(server, node_package=wheel).describe(1)
    launcher(server, node_package=wheel).launch(1)

    planned = plan[0].body["startTask"]
    assert planned["environmentSettings"] == [{"name": "WORKPOOL_NODE_PACKAGE", "value": wheel.split("?")[0] + "?***"}]
    start = server.sent("POST", "^/pools$")[0].body["startTask"]
    assert start["environmentSettings"] == [{"name": "WORKPOOL_NODE_PACKAGE", "value": wheel}]
    assert wheel not in start["commandLine"]


def test_an_identity_pool_refused_by_resource_manager_is_a_clear_error(
    server: RecordingServer, fake: FakeBatch
) -> None:
    server.route("PUT", ARM_POOL, arm_error(403, "AuthorizationFailed", "no write access to batchAccounts/pools"))

    with pytest.raises(WorkpoolError) as error:
        identity_launcher(server).launch(2)

    message = str(error.value)
    assert message.startswith("creating Azure Batch pool gpu (2 × STANDARD_NC6S_V3, dedicated) failed: 403")
    assert "AuthorizationFailed: no write access to batchAccounts/pools" in message
    assert message.endswith("nothing was created")
    assert non_get(server) == [("PUT", ARM_POOL)]
