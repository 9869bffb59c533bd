"""`orchestration logs` on Azure Batch: the consumer tasks' stdout.txt and stderr.txt, read through
the real azure-batch SDK from the Batch emulator, whose nodes really ran `consumer run`."""

from __future__ import annotations

import re

import pytest

from tests.support.batch_emulator import BatchEmulator
from tests.test_batch_emulator import JOB, SLEEP_TASK, Cluster, cluster  # noqa: F401 - fixtures

pytestmark = [pytest.mark.batch_emulator, pytest.mark.azurite, pytest.mark.slow, pytest.mark.timeout(600)]


def task_node(batch: BatchEmulator, task_id: str) -> str:
    (task,) = [t for t in batch.tasks(JOB) if t["id"] == task_id]
    return str(task["nodeInfo"]["nodeId"])


def test_logs_read_each_consumer_tasks_output_through_the_batch_api(cluster: Cluster) -> None:  # noqa: F811
    # Given a run drained by two consumer tasks on two emulated nodes
    cluster.batch.set_node_env(WORKPOOL_EXAMPLE_SLEEP_S="0.01")
    run_id, _ = cluster.enqueue(16, "--task", SLEEP_TASK, "--batch-size", "4")
    try:
        launched = cluster.cli("launch", "--backend", "azure-batch", "--nodes", "2")
        assert launched.code == 0, launched.stderr
        cluster.drained(run_id)

        # When their logs are asked for: all, one task's last lines, one run's
        everything = cluster.cli("logs")
        one = cluster.cli("logs", "--node", "consumer-0002", "--tail", "2")
        of_run = cluster.cli("logs", "--run", run_id)
        missing = cluster.cli("logs", "--node", "consumer-0009")
    finally:
        cluster.cli("teardown", "--backend", "azure-batch")

    # Then each task's stderr (where the consumer logs) comes back under its node's name
    assert everything.code == 0, everything.stderr
    nodes = {task_node(cluster.batch, t) for t in ("consumer-0001", "consumer-0002")}
    labelled = re.findall(r"(?m)^(\S+) (stdout|stderr) \| (.*)$", everything.stdout)
    assert {node for node, _, _ in labelled} == nodes
    batches = [text for _, stream, text in labelled if stream == "stderr" and f"run={run_id} batch=" in text]
    assert len([t for t in batches if "images=4 ok=4" in t]) == 4
    # --node takes the task id too; --tail keeps the last lines of each of its two files
    assert one.code == 0, one.stderr
    node = task_node(cluster.batch, "consumer-0002")
    assert re.findall(r"(?m)^(\S+) stderr \| ", one.stdout) == [node, node]
    assert of_run.code == 0 and all(f"run={run_id} " in line for line in of_run.stdout.splitlines())
    assert len(of_run.stdout.splitlines()) >= 4
    assert missing.code == 2 and "consumer-0009" in missing.stderr
    # and no secret of the account travels
    for out in (everything, one, of_run):
        assert cluster.batch.key not in out.stdout + out.stderr
