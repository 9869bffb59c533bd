"""Batch AI launcher, driven through the real azure-mgmt-batchai SDK against a recording server.

Each test is a small story: given a fake Batch AI (or a scripted answer on top of it), when the
launcher acts, then the requests the SDK sent say what Azure would have been asked to do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError

from orchestration.backends.batchai import BatchAILauncher
from tests.conftest import TEST_TASK_MODULES
from tests.support.recording_server import (
    BATCH_KEY,
    CONNECTION_STRING,
    SAS_TOKEN,
    SECRETS,
    FakeBatchAI,
    FakeTokenCredential,
    RecordingServer,
    UnusableCredential,
    arm_error,
    recording_server,
    reply,
)
from workpool.errors import NotFoundError, SettingsError, WorkpoolError
from workpool.settings import SCHEDULED_EVENTS_URL, Settings, load_settings

WS_PATH = "/subscriptions/sub-1/resourceGroups/rg-pool/providers/Microsoft.BatchAI/workspaces/ws"


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with recording_server() as s:
        yield s


@pytest.fixture
def fake(server: RecordingServer) -> FakeBatchAI:
    return FakeBatchAI(server)


def settings_for(server: RecordingServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "subscription_id": "sub-1",
        "resource_group": "rg-pool",
        "location": "westeurope",
        "workspace": "ws",
        "cluster": "gpu",
        "arm_endpoint": server.url,
        "cluster_poll_interval_s": 0,
        "vm_size": "STANDARD_NC24",
        # No default package name (anyone could publish one): nodes install a pinned URL.
        "node_package": "https://pkgs.example.com/wheels/workpool-0.1.0-py3-none-any.whl",
        "queue": "images",
        "results": "scores",
        "visibility_timeout_s": 300,
        "connection_string": CONNECTION_STRING,
        "sas_token": SAS_TOKEN,
        "account_url": "https://imagesacct.blob.core.windows.net",
        "batch_account_key": BATCH_KEY,
    }
    values.update(overrides)
    return load_settings(**values)


def launcher(server: RecordingServer, credential: Any = None, **overrides: Any) -> BatchAILauncher:
    return BatchAILauncher(settings_for(server, **overrides), credential or FakeTokenCredential())


def job_puts(server: RecordingServer) -> list[Any]:
    return server.sent("PUT", r"/jobs/[^/]+$")


def env_of(body: dict[str, Any], key: str = "environmentVariables") -> dict[str, str]:
    return {e["name"]: e.get("value") for e in body["properties"].get(key) or []}


# --- launch ---------------------------------------------------------------------------------
def test_launch_creates_workspace_experiment_cluster_and_one_single_node_job_per_node(
    server: RecordingServer, fake: FakeBatchAI
) -> None:
    credential = FakeTokenCredential()
    launcher(server, credential, vm_priority="lowpriority").launch(3)

    assert [(r.method, r.path.removeprefix(WS_PATH)) for r in server.sent("PUT")] == [
        ("PUT", ""),
        ("PUT", "/experiments/workpool"),
        ("PUT", "/clusters/gpu"),
        ("PUT", "/experiments/workpool/jobs/consumer-0001"),
        ("PUT", "/experiments/workpool/jobs/consumer-0002"),
        ("PUT", "/experiments/workpool/jobs/consumer-0003"),
    ]
    assert server.sent("PUT")[0].body == {"location": "westeurope"}
    cluster = server.sent("PUT", "/clusters/gpu$")[0].body["properties"]
    assert cluster["vmSize"] == "STANDARD_NC24"
    assert cluster["vmPriority"] == "lowpriority"
    assert cluster["scaleSettings"] == {
        "manual": {"targetNodeCount": 3, "nodeDeallocationOption": "waitforjobcompletion"}
    }
    assert cluster["virtualMachineConfiguration"]["imageReference"] == {
        "publisher": "microsoft-dsvm",
        "offer": "ubuntu-hpc",
        "sku": "2404",
    }
    setup = cluster["nodeSetup"]["setupTask"]
    assert 'pip install "$WORKPOOL_NODE_PACKAGE"' in setup["commandLine"]
    assert setup["environmentVariables"] == [
        {"name": "WORKPOOL_NODE_PACKAGE", "value": "https://pkgs.example.com/wheels/workpool-0.1.0-py3-none-any.whl"}
    ]
    assert cluster["userAccountSettings"] == {"adminUserName": "workpool"}

    for index, request in enumerate(job_puts(server), start=1):
        job = request.body["properties"]
        assert job["nodeCount"] == 1
        assert job["cluster"] == {"id": WS_PATH + "/clusters/gpu"}
        assert "consumer run --workers auto" in job["customToolkitSettings"]["commandLine"]
        assert f"--worker-id consumer-{index:04d}" in job["customToolkitSettings"]["commandLine"]
        assert env_of(request.body) == {
            "WORKPOOL_QUEUE": "images",
            "WORKPOOL_RESULTS": "scores",
            "WORKPOOL_VISIBILITY_TIMEOUT_S": "300",
            "WORKPOOL_ACCOUNT_URL": "https://imagesacct.blob.core.windows.net",
            "WORKPOOL_SCHEDULED_EVENTS_URL": SCHEDULED_EVENTS_URL,  # nodes watch for their preemption
            "WORKPOOL_LOCAL_ROOTS": "none",  # nodes read no local path a message names (docs/security.md)
            "WORKPOOL_TASK_MODULES": TEST_TASK_MODULES,  # the tests' own task modules (tests/conftest.py)
        }
        # Secrets travel only as Batch AI secret environment variables.
        assert env_of(request.body, "secrets") == {
            "WORKPOOL_SAS_TOKEN": SAS_TOKEN,
            "AZURE_STORAGE_CONNECTION_STRING": CONNECTION_STRING,
        }

    # Every request was signed with the Entra token for the configured cloud, over api 2018-05-01.
    assert {r.authorization for r in server.requests} == {"Bearer"}
    assert {r.query["api-version"] for r in server.requests} == {"2018-05-01"}
    assert set(credential.scopes) == {server.url + "/.default"}


def test_launch_reuses_what_exists_and_only_adds_missing_jobs(server: RecordingServer, fake: FakeBatchAI) -> None:
    launcher(server).launch(2)
    server.requests.clear()

    launcher(server).launch(3)

    assert not server.sent("PUT", r"/workspaces/ws$") and not server.sent("PUT", r"/experiments/workpool$")
    assert not server.sent("PUT", "/clusters/")
    patch = server.sent("PATCH", "/clusters/gpu$")[0].body
    assert patch["properties"]["scaleSettings"]["manual"]["targetNodeCount"] == 3
    assert [r.path.rsplit("/", 1)[-1] for r in job_puts(server)] == ["consumer-0003"]


# --- scale, status, teardown ------------------------------------------------------------------
def test_scale_up_patches_the_target_then_submits_jobs(server: RecordingServer, fake: FakeBatchAI) -> None:
    launcher(server).launch(2)
    server.requests.clear()

    launcher(server).scale(4)

    methods = [(r.method, r.path.rsplit("/", 1)[-1]) for r in server.requests if r.method != "GET"]
    assert methods == [("PATCH", "gpu"), ("PUT", "consumer-0003"), ("PUT", "consumer-0004")]
    assert server.sent("PATCH")[0].body == {
        "properties": {
            "scaleSettings": {"manual": {"targetNodeCount": 4, "nodeDeallocationOption": "waitforjobcompletion"}}
        }
    }


def test_scale_down_terminates_the_newest_jobs_before_shrinking(server: RecordingServer, fake: FakeBatchAI) -> None:
    launcher(server).launch(3)
    server.requests.clear()

    launcher(server).scale(1)

    methods = [(r.method, r.path.rsplit("/", 2)[-2:]) for r in server.requests if r.method != "GET"]
    assert methods == [
        ("POST", ["consumer-0003", "terminate"]),
        ("POST", ["consumer-0002", "terminate"]),
        ("PATCH", ["clusters", "gpu"]),
    ]
    assert server.sent("PATCH")[0].body["properties"]["scaleSettings"]["manual"]["targetNodeCount"] == 1


def test_scaling_a_cluster_that_was_never_launched_says_so(server: RecordingServer, fake: FakeBatchAI) -> None:
    with pytest.raises(NotFoundError, match="cluster gpu does not exist: run `orchestration launch` first"):
        launcher(server).scale(2)


def test_status_shows_allocation_state_and_each_jobs_state(server: RecordingServer, fake: FakeBatchAI) -> None:
    launcher(server).launch(2)
    launcher(server).scale(1)

    state = launcher(server).state()

    assert state.backend == "batchai"
    assert state.target_nodes == 1
    assert "allocation steady" in state.detail and "provisioning succeeded" in state.detail
    assert [(n.id, n.state) for n in state.nodes] == [("consumer-0001", "running"), ("consumer-0002", "failed")]
    assert "exit code 137" in state.nodes[1].detail


def test_teardown_terminates_jobs_and_scales_to_zero_keeping_the_cluster(
    server: RecordingServer, fake: FakeBatchAI
) -> None:
    launcher(server).launch(2)
    server.requests.clear()

    launcher(server).teardown()

    assert len(server.sent("POST", "/terminate$")) == 2
    assert server.sent("PATCH")[0].body["properties"]["scaleSettings"]["manual"]["targetNodeCount"] == 0
    assert not server.sent("DELETE")


def test_teardown_with_delete_removes_the_cluster(server: RecordingServer, fake: FakeBatchAI) -> None:
    launcher(server).launch(1)
    launcher(server).teardown(delete=True)

    assert [r.path for r in server.sent("DELETE")] == [WS_PATH + "/clusters/gpu"]
    assert fake.clusters == {}
    assert launcher(server).state().detail == "cluster gpu does not exist"


# --- long-running operation shapes --------------------------------------------------------------
def test_a_cluster_created_asynchronously_is_polled_until_it_succeeds(
    server: RecordingServer, fake: FakeBatchAI
) -> None:
    operation = server.url + "/operations/op-1"

    def accepted(request: Any, match: Any) -> Any:
        fake._put_cluster(request, match)  # the cluster exists once the operation completes
        return reply(202, {"properties": {"provisioningState": "creating"}}, Azure_AsyncOperation=operation)

    server.route("PUT", r"/clusters/gpu$", accepted)
    server.route(
        "GET", r"^/operations/op-1$", reply(200, {"status": "InProgress"}), reply(200, {"status": "Succeeded"})
    )

    launcher(server).launch(1)

    assert len(server.sent("GET", "^/operations/op-1$")) == 2
    assert len(job_puts(server)) == 1


def test_a_job_accepted_with_a_location_header_is_polled_there(server: RecordingServer, fake: FakeBatchAI) -> None:
    location = server.url + "/operations/job-1"

    def accepted(request: Any, match: Any) -> Any:
        fake._put_job(request, match)
        return reply(202, Location=location)

    server.route("PUT", r"/jobs/consumer-0001$", accepted)
    server.route("GET", r"^/operations/job-1$", reply(202, Location=location), reply(200, {"status": "Succeeded"}))

    launcher(server).launch(1)

    assert len(server.sent("GET", "^/operations/job-1$")) == 2
    assert launcher(server).state().nodes[0].state == "running"


def test_a_failed_provisioning_state_on_the_first_answer_becomes_a_clear_error(
    server: RecordingServer, fake: FakeBatchAI
) -> None:
    # The SDK returns this resource without raising: the launcher must notice.
    failed = {
        "name": "gpu",
        "properties": {
            "provisioningState": "failed",
            "errors": [{"code": "InsufficientQuota", "message": "0 of 24 NC cores available"}],
        },
    }
    server.route("PUT", r"/clusters/gpu$", reply(200, failed))

    with pytest.raises(WorkpoolError) as error:
        launcher(server).launch(2)

    message = str(error.value)
    assert "creating Batch AI cluster gpu" in message
    assert "provisioning state Failed (InsufficientQuota: 0 of 24 NC cores available)" in message
    assert "already made: workspace ws; experiment workpool" in message
    assert "orchestration teardown --backend batchai --delete" in message
    assert not job_puts(server)


def test_an_operation_that_fails_while_polled_names_what_failed(server: RecordingServer, fake: FakeBatchAI) -> None:
    operation = server.url + "/operations/op-2"
    server.route("PUT", r"/clusters/gpu$", reply(202, {"properties": {}}, Azure_AsyncOperation=operation))
    server.route(
        "GET",
        r"^/operations/op-2$",
        reply(200, {"status": "Failed", "error": {"code": "AllocationFailed", "message": "no capacity"}}),
    )

    with pytest.raises(WorkpoolError, match=r"creating Batch AI cluster gpu .* failed") as error:
        launcher(server).launch(1)
    assert "AllocationFailed" in str(error.value)
    assert not job_puts(server)


# --- error bodies -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "code", "text"),
    [
        (400, "InvalidPropertyValue", "vmSize STANDARD_NC24 is not available in westeurope"),
        (403, "AuthorizationFailed", "the client has no permission to write Microsoft.BatchAI/workspaces/clusters"),
        (409, "Conflict", "cluster gpu is being deleted"),
    ],
)
def test_an_error_body_becomes_one_clear_message_with_what_was_made(
    server: RecordingServer, fake: FakeBatchAI, status: int, code: str, text: str
) -> None:
    server.route("PUT", r"/clusters/gpu$", arm_error(status, code, text))

    with pytest.raises(WorkpoolError) as error:
        launcher(server).launch(2)

    message = str(error.value)
    assert message.startswith("creating Batch AI cluster gpu (2 × STANDARD_NC24, dedicated) failed: ")
    assert f"{status} " in message and f"{code}: {text}" in message
    assert "already made: workspace ws; experiment workpool" in message


def test_a_refused_job_says_which_jobs_were_already_submitted(server: RecordingServer, fake: FakeBatchAI) -> None:
    server.route("PUT", r"/jobs/consumer-0002$", arm_error(409, "JobAlreadyExists", "job consumer-0002 exists"))

    with pytest.raises(WorkpoolError) as error:
        launcher(server).launch(3)

    message = str(error.value)
    assert message.startswith("submitting Batch AI job consumer-0002 failed: 409")
    assert "cluster gpu with 3 nodes; job consumer-0001 (remove with" in message
    assert len(job_puts(server)) == 2  # consumer-0003 was never tried


@pytest.mark.parametrize("missing", ["subscription_id", "resource_group", "workspace", "cluster"])
def test_missing_placement_settings_are_named_before_anything_is_sent(server: RecordingServer, missing: str) -> None:
    with pytest.raises(SettingsError, match=f"WORKPOOL_{missing.upper()}"):
        launcher(server, **{missing: None}).launch(1)
    assert server.requests == []


def test_a_missing_workspace_without_a_location_is_a_settings_error(server: RecordingServer, fake: FakeBatchAI) -> None:
    with pytest.raises(SettingsError, match="WORKPOOL_LOCATION"):
        launcher(server, location=None).launch(1)
    assert not server.sent("PUT")


def test_embedded_storage_is_refused_because_nodes_cannot_reach_it(server: RecordingServer) -> None:
    with pytest.raises(SettingsError, match="needs Azure Storage"):
        launcher(server, connection_string=None, sas_token=None, account_url=None).launch(1)
    assert server.requests == []


# --- dry run and secrets ------------------------------------------------------------------------
def test_describe_lists_the_requests_with_secrets_masked_and_sends_nothing(server: RecordingServer) -> None:
    plan = BatchAILauncher(settings_for(server), UnusableCredential()).describe(2)

    assert [(p.method, p.path.removeprefix(WS_PATH)) for p in plan] == [
        ("PUT", "?api-version=2018-05-01"),
        ("PUT", "/experiments/workpool?api-version=2018-05-01"),
        ("PUT", "/clusters/gpu?api-version=2018-05-01"),
        ("PUT", "/experiments/workpool/jobs/consumer-0001?api-version=2018-05-01"),
        ("PUT", "/experiments/workpool/jobs/consumer-0002?api-version=2018-05-01"),
    ]
    assert plan[2].body["properties"]["scaleSettings"]["manual"]["targetNodeCount"] == 2
    assert plan[3].body["properties"]["nodeCount"] == 1
    assert env_of(plan[3].body, "secrets") == {"WORKPOOL_SAS_TOKEN": "***", "AZURE_STORAGE_CONNECTION_STRING": "***"}
    text = json.dumps([p.__dict__ for p in plan])
    assert not [s for s in SECRETS if s in text]
    assert server.requests == []


def test_no_secret_reaches_a_command_line_a_plain_variable_or_a_log(
    server: RecordingServer, fake: FakeBatchAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    launcher(server).launch(2)
    launcher(server).scale(3)
    launcher(server).state()
    launcher(server).teardown(delete=True)

    for request in server.requests:
        body = request.body or {}
        props = body.get("properties", {}) if isinstance(body, dict) else {}
        command_lines = [
            props.get("customToolkitSettings", {}).get("commandLine", ""),
            props.get("nodeSetup", {}).get("setupTask", {}).get("commandLine", ""),
        ]
        plain = json.dumps(props.get("environmentVariables") or []) + json.dumps(props.get("nodeSetup", {}))
        for secret in SECRETS:
            assert all(secret not in line for line in command_lines)
            assert secret not in plain
            assert secret not in request.path and secret not in json.dumps(request.headers)
        # Only the storage secrets travel, and only in the secrets list; the Batch key never does.
        assert BATCH_KEY not in request.raw_body
    assert not [s for s in SECRETS if s in caplog.text]


def test_a_package_source_with_a_sas_travels_as_a_secret(server: RecordingServer, fake: FakeBatchAI) -> None:
    wheel = "https://pkgs.blob.core.windows.net/wheels/workpool-0.1.0-py3-none-any.whl?sv=2022&sig=d2hlZWwtc2ln"
    launcher(server, node_package=wheel).launch(1)

    setup = server.sent("PUT", "/clusters/gpu$")[0].body["properties"]["nodeSetup"]["setupTask"]
    assert "environmentVariables" not in setup
    assert setup["secrets"] == [{"name": "WORKPOOL_NODE_PACKAGE", "value": wheel}]
    assert wheel not in setup["commandLine"]


def test_a_credential_that_cannot_sign_in_is_named_as_the_cause(server: RecordingServer, fake: FakeBatchAI) -> None:
    class NotSignedIn:
        def get_token(self, *scopes: str, **_kwargs: Any) -> Any:
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token.\nAttempted: ...")

    with pytest.raises(WorkpoolError) as error:
        launcher(server, NotSignedIn()).launch(1)

    assert str(error.value) == (
        "reading Batch AI workspace ws failed: authentication failed (DefaultAzureCredential failed to retrieve "
        "a token.); sign in with `az login` or configure a credential; nothing was created"
    )
    assert server.requests == []
