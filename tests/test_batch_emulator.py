"""`orchestration --backend azure-batch` end to end against the Azure Batch emulator and Azurite.

The real CLI (child processes) drives the real azure-batch SDK against the emulator, whose nodes
run what the launcher sent: the start task downloads the uploaded wheel and bootstrap from
Azurite and installs them into a virtualenv in the node's shared dir; the consumer tasks run
`consumer run` from there against the Azurite queue. The emulated nodes have no GPU, so the
node extras are empty (WORKPOOL_NODE_EXTRAS=""). The wheel is built once per session.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as bm

from orchestration.backends.azure_batch_checks import batch_client
from tests.conftest import unique
from tests.support.azurite import Azurite
from tests.support.batch_emulator import BatchEmulator
from tests.support.batch_emulator.environment import nvidia_smi_stub
from tests.support.emulated_cluster import EmulatedCluster
from tests.support.images import stage_folder, write_sample_images
from workpool.settings import load_settings
from workpool.storage import blob_store

# Node installs take tens of seconds each on a loaded 2-core machine: room beyond the 300 s default.
pytestmark = [pytest.mark.batch_emulator, pytest.mark.azurite, pytest.mark.slow, pytest.mark.timeout(600)]

POOL = "gpu"
JOB = "workpool"
SLEEP_TASK = "consumer.tasks.examples:SleepTask"


@dataclass
class Cluster(EmulatedCluster):
    """The emulated Batch account, Azurite, and the CLI pointed at both."""

    batch: BatchEmulator

    def describe(self) -> str:
        return self.batch.describe()


@pytest.fixture
def cluster(
    batch_emulator: BatchEmulator, azurite: Azurite, tmp_path: Path, node_wheel_cache: Path
) -> Iterator[Cluster]:
    settings = load_settings(
        home=tmp_path / "home",
        queue=unique("q"),
        results=unique("r"),
        connection_string=azurite.connection_string,
    )
    env = {
        "WORKPOOL_BATCH_ACCOUNT_URL": batch_emulator.url,
        "WORKPOOL_BATCH_ACCOUNT_NAME": batch_emulator.account,
        "WORKPOOL_BATCH_ACCOUNT_KEY": batch_emulator.key,
        "WORKPOOL_POOL": POOL,
        "WORKPOOL_BATCH_JOB": JOB,
        "WORKPOOL_VM_SIZE": "Standard_NC4as_T4_v3",
        "WORKPOOL_NODE_EXTRAS": "",  # the emulated nodes have no GPU: no CUDA libraries
        # A GPU size on nodes without a GPU: refused unless allowed (the emulator has no GPU to give).
        "WORKPOOL_ALLOW_CPU": "true",
        "WORKPOOL_BATCH_SHARE_STORAGE_KEY": "true",  # no managed identity in the emulator: the key travels
        "WORKPOOL_CLUSTER_POLL_INTERVAL_S": "0.2",
        "XDG_CACHE_HOME": str(node_wheel_cache),
        # The consumers on the nodes watch the emulator's Scheduled Events, not this machine's.
        "WORKPOOL_SCHEDULED_EVENTS_URL": f"{batch_emulator.url}/metadata/scheduledevents?api-version=2020-07-01",
    }
    yield Cluster(settings, env, tmp_path / "work", batch_emulator)


def one_row_per_image(rows: list[dict[str, Any]], names: list[str]) -> None:
    assert sorted(r["image"] for r in rows) == sorted(names)
    assert {r["status"] for r in rows} == {"ok"}, [r for r in rows if r["status"] != "ok"][:3]


def installed_from_the_wheel(batch: BatchEmulator, node_id: str) -> None:
    """The node's venv holds the project as installed from the uploaded wheel (not the checkout)."""
    root = batch.node_root(POOL, node_id)
    wheels = list((root / "startup" / "wd").glob("workpool-*.whl"))
    assert len(wheels) == 1, list((root / "startup" / "wd").iterdir())
    site = next((root / "shared" / "workpool" / "venv" / "lib").glob("python3*/site-packages"))
    assert (site / "workpool" / "__init__.py").is_file() and (site / "consumer" / "cli.py").is_file()
    record = next(site.glob("workpool-*.dist-info")) / "direct_url.json"
    assert json.loads(record.read_text())["url"].endswith(wheels[0].name)


# --- launch, drain, scale ----------------------------------------------------------------------
def test_launch_installs_the_wheel_drains_a_run_and_scales_in_and_out_without_losing_a_batch(
    cluster: Cluster, tiny_model: Path
) -> None:
    # The example SleepTask of the second run takes 0.25 s per image: long enough to scale mid-run.
    cluster.batch.set_node_env(WORKPOOL_EXAMPLE_SLEEP_S="0.25")
    run_id, names = cluster.enqueue(48, "--model", cluster.model_uri(tiny_model), "--batch-size", "8")

    launched = cluster.cli("launch", "--backend", "azure-batch", "--nodes", "2")
    assert launched.code == 0, launched.stderr

    report = cluster.drained(run_id)
    assert report["images"] == 48 and report["images_ok"] == 48 and report["images_failed"] == 0
    one_row_per_image(cluster.rows(run_id), names)
    nodes = cluster.batch.nodes(POOL)
    assert len(nodes) == 2
    for node in nodes:
        installed_from_the_wheel(cluster.batch, node["id"])
    tasks = cluster.batch.tasks(JOB)
    assert sorted(t["id"] for t in tasks) == ["consumer-0001", "consumer-0002"]
    assert {t["state"] for t in tasks} == {"running"}
    assert {t["nodeInfo"]["nodeId"] for t in tasks} == {n["id"] for n in nodes}

    # One more node, then a run of the example SleepTask (1 s per batch) and, while three
    # consumers work on it, down to one: the surplus consumers are stopped (they release their
    # batches) and exactly their nodes leave the pool.
    first_nodes = {n["id"] for n in nodes}
    grown = cluster.cli("scale", "--backend", "azure-batch", "--nodes", "3")
    assert grown.code == 0, grown.stderr
    cluster.batch.wait_for(lambda: task_running(cluster.batch, "consumer-0003"), 120, "consumer-0003 on a third node")
    run_id, names = cluster.enqueue(64, "--task", SLEEP_TASK, "--batch-size", "4")
    shrunk = cluster.cli("scale", "--backend", "azure-batch", "--nodes", "1")
    assert shrunk.code == 0, shrunk.stderr

    report = cluster.drained(run_id)
    assert report["images_ok"] == 64 and report["images_failed"] == 0 and report["batches_poisoned"] == 0
    one_row_per_image(cluster.rows(run_id), names)
    by_id = {t["id"]: t for t in cluster.batch.tasks(JOB)}
    stopped = {by_id[i]["nodeInfo"]["nodeId"] for i in ("consumer-0002", "consumer-0003")}
    assert {by_id[i]["state"] for i in ("consumer-0002", "consumer-0003")} == {"completed"}
    removed = [n for r in cluster.batch.requests if r.path.endswith("/removenodes") for n in r.body["nodeList"]]
    assert sorted(removed) == sorted(stopped)
    cluster.batch.wait_for(lambda: len(cluster.batch.nodes(POOL)) == 1, 30, "the pool to shrink to one node")
    (kept,) = cluster.batch.nodes(POOL)
    assert kept["id"] == by_id["consumer-0001"]["nodeInfo"]["nodeId"] and kept["id"] in first_nodes
    assert by_id["consumer-0001"]["state"] == "running"
    for task_id in ("consumer-0002", "consumer-0003"):  # stopped gracefully: SIGTERM, batches released
        node_id = by_id[task_id]["nodeInfo"]["nodeId"]
        log = cluster.batch.node_file(POOL, node_id, f"workitems/{JOB}/job-1/{task_id}/stderr.txt")
        assert "SIGTERM received, releasing held batches" in log
    assert not re.search(r"(?im)^error", grown.stderr + shrunk.stderr)  # no 409 (or other) reached the user


def task_running(batch: BatchEmulator, task_id: str) -> bool:
    return any(t["id"] == task_id and t["state"] == "running" for t in batch.tasks(JOB))


def test_teardown_right_after_launch_stops_the_resize_under_way(cluster: Cluster) -> None:
    cluster.batch.state.timing.resize_s = 30  # the pool is still resizing when teardown comes

    launched = cluster.cli("launch", "--backend", "azure-batch", "--nodes", "2")
    assert launched.code == 0, launched.stderr
    assert cluster.batch.pool(POOL)["allocationState"] == "resizing"  # type: ignore[index]

    for _ in range(2):  # and once more at once: safe at any moment
        torn = cluster.cli("teardown", "--backend", "azure-batch")
        assert torn.code == 0, torn.stderr

    pool = cluster.batch.pool(POOL)
    assert pool is not None and (pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"]) == (0, 0)
    assert cluster.batch.job(JOB)["state"] == "completed"  # type: ignore[index]
    assert [r.path for r in cluster.batch.requests if r.path.endswith("/stopresize")]
    assert not [r for r in cluster.batch.requests if r.status == 409 and r.path.endswith("/resize")]
    assert not re.search(r"(?im)^error", torn.stderr)


def test_a_preempted_spot_node_loses_nothing_its_task_is_requeued_and_its_batches_finished_by_others(
    cluster: Cluster,
) -> None:
    cluster.batch.set_node_env(WORKPOOL_EXAMPLE_SLEEP_S="0.25")
    env = {"WORKPOOL_VM_PRIORITY": "spot", "WORKPOOL_VISIBILITY_TIMEOUT_S": "10"}
    run_id, names = cluster.enqueue(48, "--task", SLEEP_TASK, "--batch-size", "4")

    launched = cluster.cli("launch", "--backend", "azure-batch", "--nodes", "2", **env)
    assert launched.code == 0, launched.stderr
    (victim_task, _other) = cluster.batch.wait_for(
        lambda: scoring_tasks(cluster.batch), 180, "both consumers scoring a batch"
    )
    victim = victim_task["nodeInfo"]["nodeId"]
    assert cluster.batch.nodes(POOL)[0]["isDedicated"] is False

    cluster.batch.preempt(POOL, victim)

    report = cluster.drained(run_id)
    assert report["images_ok"] == 48 and report["batches_poisoned"] == 0
    one_row_per_image(cluster.rows(run_id), names)
    requeued = next(t for t in cluster.batch.tasks(JOB) if t["id"] == victim_task["id"])
    assert requeued["executionInfo"]["requeueCount"] == 1 and requeued["state"] in ("active", "running")
    assert victim not in [n["id"] for n in cluster.batch.nodes(POOL) if n["state"] != "preempted"]
    # What the killed consumer held came back after its lease and was scored elsewhere (attempt 2).
    retried = {
        node["id"]: redelivered(cluster.batch, node["id"]) for node in cluster.batch.nodes(POOL) if node["id"] != victim
    }
    assert any(retried.values()), retried
    assert not redelivered(cluster.batch, victim)


def test_a_preemption_notice_makes_the_consumer_give_its_batches_back_before_the_kill(cluster: Cluster) -> None:
    cluster.batch.set_node_env(WORKPOOL_EXAMPLE_SLEEP_S="0.25")
    run_id, names = cluster.enqueue(48, "--task", SLEEP_TASK, "--batch-size", "4")

    launched = cluster.cli("launch", "--backend", "azure-batch", "--nodes", "2", WORKPOOL_VM_PRIORITY="spot")
    assert launched.code == 0, launched.stderr
    (victim_task, _other) = cluster.batch.wait_for(
        lambda: scoring_tasks(cluster.batch), 180, "both consumers scoring a batch"
    )
    victim = victim_task["nodeInfo"]["nodeId"]

    noticed = time.monotonic()
    cluster.batch.preempt(POOL, victim, notice_s=5)  # Scheduled Events first, the kill 5 s later

    released = cluster.batch.wait_for(
        lambda: re.search(
            r"VM preempted \(Preempt \S+\): released (\d+) held batch",
            consumer_log(cluster.batch, victim, victim_task["id"]),
        ),
        30,
        "the consumer to act on the notice",
    )
    assert int(released.group(1)) >= 1
    report = cluster.drained(run_id)
    # The released batches were free at once: no waiting out their 120 s lease (the default).
    assert time.monotonic() - noticed < 90
    assert report["images_ok"] == 48 and report["batches_poisoned"] == 0
    one_row_per_image(cluster.rows(run_id), names)
    requeued = next(t for t in cluster.batch.tasks(JOB) if t["id"] == victim_task["id"])
    assert requeued["executionInfo"]["requeueCount"] == 1


def scoring_tasks(batch: BatchEmulator) -> list[dict[str, Any]]:
    """Both consumer tasks, once each has scored a batch (so each holds leases), else []."""
    tasks = [t for t in batch.tasks(JOB) if t["state"] == "running"]
    if len(tasks) < 2:
        return []
    for task in tasks:
        if not consumer_log(batch, task["nodeInfo"]["nodeId"], task["id"]).count("images=4"):
            return []
    return tasks


def consumer_log(batch: BatchEmulator, node_id: str, task_id: str) -> str:
    return batch.node_file(POOL, node_id, f"workitems/{JOB}/job-1/{task_id}/stderr.txt")


def redelivered(batch: BatchEmulator, node_id: str) -> set[str]:
    """Batches that consumers on this node scored on a second or later delivery."""
    logs = "".join(consumer_log(batch, node_id, f"consumer-{i:04d}") for i in range(1, 5))
    return set(re.findall(r"batch=(\S+) worker=\S+ attempt=[2-9]", logs))


# --- start-task failures ---------------------------------------------------------------------
def test_failing_start_tasks_show_their_reason_in_status_and_stop_launch_wait(cluster: Cluster) -> None:
    """Two pools of one account, side by side: `broken` cannot install its package; on `gpu`
    the wheel installs but `nvidia-smi` (a stub on the node) lists a GPU TensorFlow cannot see."""
    cluster.batch.put_command("nvidia-smi", nvidia_smi_stub(gpus=1))
    cluster.enqueue(4, "--task", SLEEP_TASK)
    broken = {"WORKPOOL_POOL": "broken", "WORKPOOL_BATCH_JOB": "broken", "WORKPOOL_NODE_PACKAGE": BAD_REQUIREMENT}

    for env in ({"WORKPOOL_ALLOW_CPU": "false"}, broken):
        launched = cluster.cli("launch", "--backend", "azure-batch", "--nodes", "1", **env)
        assert launched.code == 0, launched.stderr
    (bad,) = cluster.batch.wait_for_nodes("broken", "starttaskfailed", 1, timeout_s=120)
    status = cluster.cli("status", "--backend", "azure-batch", "--json", **broken)
    assert status.code == 0, status.stderr
    shown = json.dumps(status.json())
    assert bad["id"] in shown and "starttaskfailed" in shown
    assert "pip could not install workpool-no-such-requirement" in shown, shown
    waited = cluster.cli("launch", "--backend", "azure-batch", "--nodes", "1", "--wait", timeout_s=240, **broken)
    assert waited.code == 1, waited.stdout + waited.stderr
    assert (
        "start task failed" in waited.stderr and "pip could not install workpool-no-such-requirement" in waited.stderr
    )

    # Batch would try the `gpu` start task twice more before `starttaskfailed`: the first try
    # already shows the refusal (the later ones are the same install, ~30 s each here).
    (gpu,) = cluster.batch.nodes(POOL)
    (first, *_) = cluster.batch.wait_for(
        lambda: cluster.batch.start_task_tries(POOL, gpu["id"]), 180, "the first try of the gpu start task"
    )
    assert first["exitCode"] == 1 and first["failureInfo"]["code"] == "FailureExitCode"
    stderr = first["stderr"]
    assert "1 GPU(s)" in stderr and "TensorFlow sees none" in stderr and "FAILED: accelerator check" in stderr
    # never idle, never given a task (its retries may already have run out on a fast machine)
    assert cluster.batch.nodes(POOL)[0]["state"] in {"waitingforstarttask", "starttaskfailed"}


BAD_REQUIREMENT = "workpool-no-such-requirement==9.9.9"


def test_a_wheel_replaced_in_storage_after_launch_fails_the_start_task_naming_its_hash(cluster: Cluster) -> None:
    launched = cluster.cli("launch", "--backend", "azure-batch", "--nodes", "1")
    assert launched.code == 0, launched.stderr
    cluster.batch.wait_for_nodes(POOL, "running", 1, timeout_s=240)  # installed, its consumer running
    # Someone who can write the node-files container replaces the wheel `launch` uploaded.
    store = blob_store(cluster.settings, cluster.settings.node_files)
    (name,) = [n for n in store.list("wheels/") if n.endswith(".whl")]
    original = store.read(name)
    tampered = original.replace(b"workpool", b"pwnedpool", 1)
    store.write(name, tampered)

    # Batch adds a node on its own (as it does for a preempted Spot node): no `launch` or `scale` runs.
    placement = load_settings(
        batch_account_url=cluster.batch.url,
        batch_account_name=cluster.batch.account,
        batch_account_key=cluster.batch.key,
        pool=POOL,
        vm_size="Standard_NC4as_T4_v3",
    )
    client = batch_client(placement)
    client.begin_resize_pool(POOL, bm.BatchPoolResizeOptions(target_dedicated_nodes=2), polling_interval=1)
    (failed,) = cluster.batch.wait_for_nodes(POOL, "starttaskfailed", 1, timeout_s=240)

    stderr = cluster.batch.node_file(POOL, failed["id"], "startup/stderr.txt")
    wheel = name.rsplit("/", 1)[1]
    assert f"{wheel} has sha256 {hashlib.sha256(tampered).hexdigest()}" in stderr
    assert f"expected sha256 {hashlib.sha256(original).hexdigest()}" in stderr
    assert "workpool-bootstrap" not in stderr  # refused before the bootstrap ran
    shared = cluster.batch.node_root(POOL, failed["id"]) / "shared" / "workpool"
    assert not shared.exists()  # nothing installed
    status = cluster.cli("status", "--backend", "azure-batch", "--json")
    assert status.code == 0, status.stderr
    shown = json.dumps(status.json())
    assert failed["id"] in shown and "starttaskfailed" in shown and "has sha256" in shown, shown


def test_spot_nodes_the_account_has_no_quota_for_stop_launch_wait_in_plain_words(cluster: Cluster) -> None:
    cluster.batch.refuse_nodes(
        spot=True, code="AccountSpotCoreQuotaReached", message="The specified account has reached spot core quota"
    )
    cluster.enqueue(4, "--task", SLEEP_TASK)

    waited = cluster.cli(
        "launch", "--backend", "azure-batch", "--nodes", "2", "--wait", timeout_s=240, WORKPOOL_VM_PRIORITY="spot"
    )

    assert waited.code == 1, waited.stdout + waited.stderr
    assert "AccountSpotCoreQuotaReached: The specified account has reached spot core quota" in waited.stderr
    assert "Spot nodes need Spot vCPU quota" in waited.stderr and "since March 2026" in waited.stderr
    assert cluster.batch.nodes(POOL) == []


# --- the benchmark on the cluster path -------------------------------------------------------
def test_the_benchmark_runs_both_tiers_on_the_cluster_and_prints_the_drain_table(
    cluster: Cluster, tiny_model: Path
) -> None:
    folder = cluster.work / "bench-images"
    write_sample_images(folder, 32, (64, 48))
    source = stage_folder(cluster.settings, folder)

    out = cluster.cli(
        "benchmark", "--backend", "azure-batch", "--tiers", "1,2", "--images", "32", "--source", source,
        "--model", cluster.model_uri(tiny_model), "--batch-size", "8", "--timeout-s", "240",
        timeout_s=600,
    )  # fmt: skip

    assert out.code == 0, out.stdout + out.stderr
    assert "| 1 node | 2 nodes |" in out.stdout and "Launch → drained (s)" in out.stdout, out.stdout
    drain = re.search(r"\| Drain wall time \(s\)\s+\|\s+([\d.]+) \|\s+([\d.]+) \|", out.stdout)
    assert drain is not None and all(float(v) > 0 for v in drain.groups()), out.stdout
    pool = cluster.batch.pool(POOL)
    assert pool is not None and (pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"]) == (0, 0)
