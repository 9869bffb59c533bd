"""`orchestration --backend aml` end to end against the AML emulator and Azurite.

The real CLI (child processes) drives the real azure-ai-ml SDK against the emulator
(tests/support/aml_emulator), whose jobs run what the launcher sent: the job downloads the
uploaded wheel (its input), checks its sha256, installs it into a virtualenv and runs
`consumer run` against the Azurite queue. The emulated nodes have no GPU: the node extras are
empty and WORKPOOL_ALLOW_CPU=true. The wheel is built once per session.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unique
from tests.support.aml_emulator import AmlEmulator, aml_emulator
from tests.support.azurite import Azurite
from tests.support.emulated_cluster import EmulatedCluster
from tests.support.images import stage_folder, write_sample_images
from workpool.settings import load_settings

pytestmark = [pytest.mark.aml_emulator, pytest.mark.azurite, pytest.mark.slow, pytest.mark.timeout(600)]

COMPUTE = "gpu"
IDENTITY = (
    "/subscriptions/00000000-0000-0000-0000-00000000a001/resourceGroups/rg-scoring/providers"
    "/Microsoft.ManagedIdentity/userAssignedIdentities/workpool-nodes"
)
SLEEP_TASK = "consumer.tasks.examples:SleepTask"


@dataclass
class Cluster(EmulatedCluster):
    """The emulated AML workspace, Azurite, and the CLI pointed at both."""

    aml: AmlEmulator

    def describe(self) -> str:
        return self.aml.describe()

    def running(self) -> list[dict[str, Any]]:
        return [j for j in self.aml.jobs() if j["status"] == "Running"]


@pytest.fixture
def cluster(azurite: Azurite, tmp_path: Path, node_wheel_cache: Path, batch_dependencies: Path) -> Iterator[Cluster]:
    with aml_emulator(tmp_path / "aml", azurite.connection_string, dependencies_view=batch_dependencies) as aml:
        settings = load_settings(
            home=tmp_path / "home", queue=unique("q"), results=unique("r"), connection_string=azurite.connection_string
        )
        env = {
            "WORKPOOL_ARM_ENDPOINT": aml.url,
            "WORKPOOL_SUBSCRIPTION_ID": aml.subscription,
            "WORKPOOL_RESOURCE_GROUP": aml.resource_group,
            "WORKPOOL_WORKSPACE": aml.workspace,
            "WORKPOOL_CLUSTER": COMPUTE,
            "WORKPOOL_VM_SIZE": "Standard_NC4as_T4_v3",
            "WORKPOOL_MANAGED_IDENTITY_ID": IDENTITY,
            "WORKPOOL_MANAGED_IDENTITY_CLIENT_ID": "5e1f0000-0000-0000-0000-0000000000c1",
            "WORKPOOL_NODE_EXTRAS": "",  # the emulated nodes have no GPU: no CUDA libraries
            "WORKPOOL_ALLOW_CPU": "true",
            "WORKPOOL_CLUSTER_POLL_INTERVAL_S": "0.2",
            "XDG_CACHE_HOME": str(node_wheel_cache),
            "WORKPOOL_SCHEDULED_EVENTS_URL": f"{aml.url}/metadata/scheduledevents?api-version=2020-07-01",
            # DefaultAzureCredential signs in as a managed identity whose token endpoint the emulator serves.
            **aml.identity_env(),
        }
        yield Cluster(settings, env, tmp_path / "work", aml)


def one_row_per_image(rows: list[dict[str, Any]], names: list[str]) -> None:
    assert sorted(r["image"] for r in rows) == sorted(names)
    assert {r["status"] for r in rows} == {"ok"}, [r for r in rows if r["status"] != "ok"][:3]


def test_launch_two_drains_a_run_one_row_per_image_and_no_key_in_any_definition(
    cluster: Cluster, tiny_model: Path
) -> None:
    run_id, names = cluster.enqueue(24, "--model", cluster.model_uri(tiny_model), "--batch-size", "6")

    launched = cluster.cli("launch", "--backend", "aml", "--nodes", "2")
    assert launched.code == 0, launched.stderr

    report = cluster.drained(run_id)
    assert report["images"] == 24 and report["images_ok"] == 24 and report["images_failed"] == 0
    one_row_per_image(cluster.rows(run_id), names)
    jobs = cluster.aml.jobs()
    assert [j["name"] for j in jobs] == [
        f"gpu-{cluster.settings.queue}-consumer-0001",
        f"gpu-{cluster.settings.queue}-consumer-0002",
    ]
    compute = cluster.aml.compute(COMPUTE)
    assert compute is not None
    scale = compute["properties"]["properties"]["scaleSettings"]
    assert (scale["minNodeCount"], scale["maxNodeCount"]) == (0, 2)
    assert compute["identity"]["type"].lower() == "userassigned"
    sent = json.dumps([r.body for r in cluster.aml.requests])
    assert "AccountKey" not in sent and "sig=" not in sent and "SAS_TOKEN" not in sent
    for job in jobs:
        log = cluster.aml.job_log(job["name"])
        assert "workpool-node: FAILED" not in log
        env = job["properties"]["environmentVariables"]
        assert len(env["WORKPOOL_NODE_WHEEL_SHA256"]) == 64

    status = cluster.cli("status", "--json")
    assert status.code == 0, status.stderr
    cluster_state = status.json()["cluster"]
    assert cluster_state["backend"] == "aml" and cluster_state["target_nodes"] == 2
    assert "running" in cluster_state["detail"]

    # and `orchestration logs` reads each consumer job's own log through the run history
    logs = cluster.cli("logs", "--backend", "aml", "--node", jobs[0]["name"], "--tail", "200")
    assert logs.code == 0, logs.stderr
    assert f"worker {jobs[0]['name']}: consuming queue {cluster.settings.queue}" in logs.stdout
    assert jobs[1]["name"] not in logs.stdout


def test_teardown_cancels_every_job_twice_safely_and_delete_removes_the_compute(cluster: Cluster) -> None:
    launched = cluster.cli("launch", "--backend", "aml", "--nodes", "2")
    assert launched.code == 0, launched.stderr
    cluster.aml.wait_for(lambda: len(cluster.running()) == 2, 180, "two consumer jobs running")

    for _ in range(2):
        torn = cluster.cli("teardown", "--backend", "aml")
        assert torn.code == 0, torn.stderr
    assert {j["status"] for j in cluster.aml.jobs()} == {"Canceled"}
    assert cluster.aml.compute(COMPUTE) is not None

    for _ in range(2):
        deleted = cluster.cli("teardown", "--backend", "aml", "--delete")
        assert deleted.code == 0, deleted.stderr
    assert cluster.aml.compute(COMPUTE) is None


def test_a_failing_job_shows_in_status_with_its_log_and_stops_launch_wait(cluster: Cluster) -> None:
    # A consumer that cannot start (a --workers value it refuses): its job fails at once.
    run_id, _names = cluster.enqueue(4, "--task", SLEEP_TASK)
    env: dict[str, Any] = {"WORKPOOL_NODE_WORKERS": "not-a-number"}

    waited = cluster.cli("launch", "--backend", "aml", "--nodes", "1", "--wait", **env)

    assert waited.code == 1, waited.stderr
    assert "cannot run consumers" in waited.stderr and "its log ends" in waited.stderr
    (job,) = cluster.aml.jobs()
    assert job["status"] == "Failed"
    status = cluster.cli("status", "--backend", "aml", "--json")  # launch --wait tore the pool down
    assert status.code == 0, status.stderr
    nodes = status.json()["cluster"]["nodes"]
    assert any(n["state"] == "Failed" and "its log ends" in n["detail"] for n in nodes), nodes
    assert run_id


def test_a_refused_quota_is_one_clear_error(cluster: Cluster) -> None:
    cluster.aml.refuse_quota("LowPriority", "Not enough low-priority cores quota for family NCASv3_T4")

    launched = cluster.cli("launch", "--backend", "aml", "--nodes", "2", WORKPOOL_VM_PRIORITY="spot")

    assert launched.code == 1
    assert "QuotaExceeded" in launched.stderr and "low-priority cores" in launched.stderr
    assert cluster.aml.jobs() == []


def scoring(cluster: Cluster, count: int) -> list[dict[str, Any]]:
    """`count` running consumer jobs once each has scored a batch (so each holds leases), else []."""
    jobs = cluster.running()
    if len(jobs) < count:
        return []
    return jobs if all("images=4" in cluster.aml.job_log(j["name"]) for j in jobs) else []


def test_scale_three_then_one_mid_run_loses_nothing(cluster: Cluster) -> None:
    cluster.aml.set_node_env(WORKPOOL_EXAMPLE_SLEEP_S="0.5")  # 2 s a batch: a run long enough to scale mid-way
    run_id, names = cluster.enqueue(96, "--task", SLEEP_TASK, "--batch-size", "4")
    env: dict[str, Any] = {"WORKPOOL_STOP_FINISH_S": "5"}
    launched = cluster.cli("launch", "--backend", "aml", "--nodes", "1", **env)
    assert launched.code == 0, launched.stderr

    grown = cluster.cli("scale", "--nodes", "3", **env)
    assert grown.code == 0, grown.stderr
    three = cluster.aml.wait_for(lambda: scoring(cluster, 3), 240, "three consumers scoring")
    compute = cluster.aml.compute(COMPUTE)
    assert compute is not None and compute["properties"]["properties"]["scaleSettings"]["maxNodeCount"] == 3

    shrunk = cluster.cli("scale", "--nodes", "1", **env)
    assert shrunk.code == 0, shrunk.stderr

    # The two newest jobs were cancelled and had ended (batches released) when scale returned
    by_name = {j["name"]: j for j in cluster.aml.jobs()}
    names_sorted = sorted(j["name"] for j in three)
    assert [by_name[n]["status"] for n in names_sorted] == ["Running", "Canceled", "Canceled"]
    for name in names_sorted[1:]:
        assert "SIGTERM received, releasing held batches" in cluster.aml.job_log(name)
    report = cluster.drained(run_id)
    assert report["images_ok"] == 96 and report["images_failed"] == 0 and report["batches_poisoned"] == 0
    one_row_per_image(cluster.rows(run_id), names)
    status = cluster.cli("status", "--json")
    assert status.json()["cluster"]["target_nodes"] == 1


def test_a_preempted_low_priority_node_gives_its_batches_back_and_its_job_is_requeued(cluster: Cluster) -> None:
    cluster.aml.set_node_env(WORKPOOL_EXAMPLE_SLEEP_S="0.25")
    env: dict[str, Any] = {
        "WORKPOOL_VM_PRIORITY": "spot",
        "WORKPOOL_VISIBILITY_TIMEOUT_S": "600",
    }  # a lease that would outlast the test
    run_id, names = cluster.enqueue(48, "--task", SLEEP_TASK, "--batch-size", "4")
    launched = cluster.cli("launch", "--backend", "aml", "--nodes", "2", **env)
    assert launched.code == 0, launched.stderr
    victim, _other = cluster.aml.wait_for(lambda: scoring(cluster, 2), 240, "both consumers scoring")
    compute = cluster.aml.compute(COMPUTE)
    assert compute is not None and compute["properties"]["properties"]["vmPriority"] == "LowPriority"

    cluster.aml.preempt(COMPUTE, victim["node"], notice_s=5)

    report = cluster.drained(run_id, timeout_s=300)  # far less than the 600 s lease: released at once
    assert report["images_ok"] == 48 and report["batches_poisoned"] == 0
    one_row_per_image(cluster.rows(run_id), names)
    requeued = next(j for j in cluster.aml.jobs() if j["name"] == victim["name"])
    assert requeued["starts"] >= 2 or requeued["status"] == "Queued"
    assert "preempt" in cluster.aml.job_log(victim["name"]).lower()


def test_the_benchmark_runs_both_tiers_on_aml_and_prints_the_drain_table(cluster: Cluster, tiny_model: Path) -> None:
    folder = cluster.work / "bench-images"
    write_sample_images(folder, 16, (64, 48))
    source = stage_folder(cluster.settings, folder)

    out = cluster.cli(
        "benchmark", "--backend", "aml", "--tiers", "1,2", "--images", "16", "--source", source,
        "--model", cluster.model_uri(tiny_model), "--batch-size", "8", "--timeout-s", "240",
        timeout_s=600,
    )  # fmt: skip

    assert out.code == 0, out.stdout + out.stderr
    assert "| 1 node | 2 nodes |" in out.stdout and "Launch → drained (s)" in out.stdout, out.stdout
    drain = re.search(r"\| Drain wall time \(s\)\s+\|\s+([\d.]+) \|\s+([\d.]+) \|", out.stdout)
    assert drain is not None and all(float(v) > 0 for v in drain.groups()), out.stdout
    assert {j["status"] for j in cluster.aml.jobs()} == {"Canceled"}


FAST: dict[str, Any] = {
    "WORKPOOL_AUTOSCALE_INTERVAL_S": "1",
    "WORKPOOL_AUTOSCALE_IDLE_S": "5",
    "WORKPOOL_AUTOSCALE_COOLDOWN_S": "2",
    "WORKPOOL_AUTOSCALE_BATCHES_PER_NODE": "2",
}


def test_autoscale_on_aml_grows_for_a_run_returns_to_zero_and_the_report_prices_it(cluster: Cluster) -> None:
    cluster.aml.set_node_env(WORKPOOL_EXAMPLE_SLEEP_S="0.25")
    try:
        # Given `launch --autoscale 0:2` on an empty queue: the compute is made, no job runs
        launched = cluster.cli("launch", "--backend", "aml", "--autoscale", "0:2", **FAST)
        assert launched.code == 0, launched.stderr
        assert cluster.aml.compute(COMPUTE) is not None and cluster.aml.jobs() == []

        # When a run of 8 batches is enqueued: 8 / 2 per node, capped at 2 jobs
        run_id, names = cluster.enqueue(32, "--task", SLEEP_TASK, "--batch-size", "4")
        cluster.aml.wait_for(lambda: len(cluster.running()) == 2, 120, "two consumer jobs")

        # Then it drains, every image once, the jobs are cancelled after the idle time, and the
        # report prices the node time
        report = cluster.drained(run_id)
        assert report["images_ok"] == 32 and report["batches_poisoned"] == 0
        one_row_per_image(cluster.rows(run_id), names)
        cluster.aml.wait_for(lambda: not cluster.running(), 120, "the jobs to be cancelled once idle")
        priced = cluster.cli("report", "--run", run_id, "--price-per-node-hour", "3.67", "--json")
        assert priced.code == 0, priced.stderr
        assert priced.json()["cost"] > 0
        status = cluster.cli("status", "--json")
        scaler = status.json()["autoscaler"]
        assert scaler["running"] and scaler["backend"] == "aml" and scaler["last_change"]["to"] == 0
    finally:
        torn = cluster.cli("teardown", "--backend", "aml")
        assert torn.code == 0, torn.stderr
    assert "stopped the autoscaler" in torn.stderr
