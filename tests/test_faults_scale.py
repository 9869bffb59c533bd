"""Scale-in mid-run: `orchestration scale` halves the pool; the released batches are not lost.

The supervisor SIGTERMs the extra nodes; each releases every batch it holds (the one being scored
and the prefetched one), visible again at once, and exits 0. The remaining nodes must finish those
batches: they show up as second deliveries (attempt 2) acked by a node that kept running.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestration.local_state import state_dir
from tests.support.faults_pool import check_every_image_once, enqueue_run, figures_line, run_store, staged_images
from tests.support.orchestration_cli import orchestration, pool, torn_down
from tests.support.waiting import wait_for
from workpool.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

IMAGES, BATCH = 240, 10


def test_scaling_in_by_half_mid_run_hands_released_batches_to_the_rest(
    settings: Settings, backend: str, tmp_path: Path
) -> None:
    # Given 24 one-second batches being scored by four nodes
    source, names = staged_images(settings, tmp_path / "images", IMAGES)
    enqueue_run(settings, source, "scalein", "--task", "consumer.tasks.examples:SleepTask", "--batch-size", str(BATCH))
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.1", "WORKPOOL_VISIBILITY_TIMEOUT_S": "30"}
    runs = run_store(settings)
    with torn_down(settings, env):
        assert orchestration(settings, "launch", "--nodes", "4", env=env).code == 0
        wait_for(lambda: len(runs.record_batch_ids("scalein")) >= 2, timeout_s=60, what="two acked batches")
        record = pool(settings)
        assert record is not None
        stopped = [n.id for n in record.nodes[2:]]
        kept = [n.id for n in record.nodes[:2]]

        # When the pool is scaled in to two nodes from another shell
        scaled = orchestration(settings, "scale", "--nodes", "2", env=env)
        assert scaled.code == 0, scaled.stderr
        done_at_scale = len(runs.record_batch_ids("scalein"))
        wait_for(lambda: len(getattr(pool(settings), "nodes", [])) == 2, timeout_s=40, what="two nodes to stop")

        # Then the run still completes, every image scored once, nothing poisoned
        waited = orchestration(settings, "wait", "--run", "scalein", "--json", env=env)
        assert waited.code == 0, waited.stdout + waited.stderr
        report = waited.json()

    logs = state_dir(settings) / "logs"
    supervisor = (logs / "supervisor.log").read_text()
    for node_id in stopped:
        # the extra nodes stopped gracefully (SIGTERM, exit 0), not killed, and said what they gave back
        assert f"{node_id} stopped (exit 0)" in supervisor
    released = sum(
        int(n) for node_id in stopped for n in re.findall(r"released (\d+) held", (logs / f"{node_id}.log").read_text())
    )
    assert released >= 1, "the stopped nodes held batches when they were asked to stop"
    records = runs.read_batch_records("scalein")
    second = [r for r in records if r.attempt > 1]
    # and every released batch was finished by a node that kept running
    assert len(second) >= released
    assert all(r.worker in kept for r in second)
    assert done_at_scale < IMAGES // BATCH, "the scale-in happened mid-run"
    assert report["images_ok"] == IMAGES and report["batches_poisoned"] == 0
    assert sum(report["workers"].values()) == IMAGES
    rows = check_every_image_once(settings, "scalein", names, tmp_path / "scalein.jsonl")
    assert rows.rows == rows.ok == IMAGES
    figures_line(
        f"scale-in[{backend}]",
        images=IMAGES,
        batches=IMAGES // BATCH,
        nodes="4->2",
        batches_done_at_scale=done_at_scale,
        batches_released=released,
        finished_by_remaining=len(second),
        **rows.figures(),
        poisoned=report["batches_poisoned"],
    )
