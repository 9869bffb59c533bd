"""The autoscaler on Azure Batch, end to end: the real CLI and azure-batch SDK against the Batch
emulator (real node processes running `consumer run` from the uploaded wheel) and Azurite.

Same loop as on the local backend (nothing in the policy knows the backend): `launch --autoscale`
on an empty queue, nodes added for a run, scale to zero once the queue has been idle.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_batch_emulator import (  # noqa: F401 - the fixtures travel with their module
    JOB,
    POOL,
    SLEEP_TASK,
    Cluster,
    cluster,
    one_row_per_image,
)

pytestmark = [pytest.mark.batch_emulator, pytest.mark.azurite, pytest.mark.slow]

FAST = {
    "WORKPOOL_AUTOSCALE_INTERVAL_S": "1",
    "WORKPOOL_AUTOSCALE_IDLE_S": "5",
    "WORKPOOL_AUTOSCALE_COOLDOWN_S": "2",
    "WORKPOOL_AUTOSCALE_BATCHES_PER_NODE": "2",
}


def target(c: Cluster) -> int:
    pool: Any = c.batch.pool(POOL)
    return 0 if pool is None else int(pool["targetDedicatedNodes"]) + int(pool["targetLowPriorityNodes"])


def test_autoscale_on_azure_batch_grows_for_a_run_and_returns_to_zero(cluster: Cluster) -> None:  # noqa: F811
    cluster.batch.set_node_env(WORKPOOL_EXAMPLE_SLEEP_S="0.25")
    try:
        # Given `launch --autoscale 0:2` on an empty queue: Batch refuses an empty pool at
        # creation, so it starts with one node, which the autoscaler gives back after --idle-s
        launched = cluster.cli("launch", "--backend", "azure-batch", "--autoscale", "0:2", **FAST)
        assert launched.code == 0, launched.stderr
        assert "launched 1 node(s) on azure-batch" in launched.stderr
        cluster.batch.wait_for(lambda: target(cluster) == 0, 90, "the idle pool to go to zero")

        # When a run of 8 one-second batches is enqueued: activation, 8 / 2 per node capped at 2
        run_id, names = cluster.enqueue(32, "--task", SLEEP_TASK, "--batch-size", "4")
        cluster.batch.wait_for(lambda: target(cluster) == 2, 60, "the pool to grow to two nodes")

        # Then the run drains, every image exactly once, and the pool goes back to zero
        report = cluster.drained(run_id)
        assert report["images_ok"] == 32 and report["batches_poisoned"] == 0
        one_row_per_image(cluster.rows(run_id), names)
        cluster.batch.wait_for(lambda: target(cluster) == 0, 120, "the pool to return to zero")
        status = cluster.cli("status", "--backend", "azure-batch", "--json")
        assert status.code == 0, status.stderr
        scaler = status.json()["autoscaler"]
        assert scaler["running"] and scaler["backend"] == "azure-batch"
        change = scaler["last_change"]
        # (from 2, or from 1 when the tail of the run let one node go first)
        assert change["from"] in (1, 2) and change["to"] == 0 and change["reason"].startswith("scale to zero")
        # The consumers of the emptied pool were stopped through the job's tasks, as `scale` does
        assert {t["state"] for t in cluster.batch.tasks(JOB)} == {"completed"}
    finally:
        torn = cluster.cli("teardown", "--backend", "azure-batch")
        assert torn.code == 0, torn.stderr
    assert "stopped the autoscaler" in torn.stderr
