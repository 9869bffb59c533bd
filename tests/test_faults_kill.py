"""Killed workers: SIGKILL a random consumer every few seconds while a 1,000-image run drains.

The local launcher's supervisor respawns each killed node; the batches a dead node held come back
when their lease runs out and are finished by whoever receives them. The run must end with exactly
one row per image and no poisoned batch. Scoring is the model-free ledger task, so the test can
count how often each batch was really scored (at-least-once delivery: a batch caught mid-score by
a kill is scored again; that repeat work is reported, never a repeated row).
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.support.faults_pool import (
    check_every_image_once,
    enqueue_run,
    figures_line,
    run_store,
    scoring_count,
    staged_images,
)
from tests.support.faults_tasks import LEDGER_ENV, LEDGER_TASK
from tests.support.orchestration_cli import live_node_pids, orchestration, pool, torn_down
from tests.support.waiting import wait_for
from workpool.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

IMAGES, BATCH, NODES = 1000, 25, 4


def test_random_sigkills_lose_nothing_and_poison_nothing(settings: Settings, backend: str, tmp_path: Path) -> None:
    # Given 1,000 images in 40 batches of 1.5 s each, and a 3 s lease, so a dead node's
    # batches are back on the queue within seconds
    source, names = staged_images(settings, tmp_path / "images", IMAGES)
    enqueue_run(settings, source, "killed", "--task", LEDGER_TASK, "--batch-size", str(BATCH))
    ledger = tmp_path / "ledger.txt"
    # Every delivery counts as an attempt, a killed one too (a batch that crashes its consumer must
    # end in poison, not kill nodes forever). Each kill here costs two deliveries (the batch being
    # scored and the prefetched one), and a node is killed every ~9 s: far denser than preemption,
    # dense enough that 5 attempts poisoned an innocent batch about one run in four. 10 attempts
    # keep the scenario about losing nothing; `max_attempt` reports the deliveries actually seen.
    env = {
        "WORKPOOL_EXAMPLE_SLEEP_S": "0.06",
        "WORKPOOL_VISIBILITY_TIMEOUT_S": "3",
        "WORKPOOL_MAX_ATTEMPTS": "10",
        LEDGER_ENV: str(ledger),
    }
    runs = run_store(settings)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kills = 0
    started = time.monotonic()
    with torn_down(settings, env):
        launched = orchestration(settings, "launch", "--nodes", str(NODES), env=env)
        assert launched.code == 0, launched.stderr
        wait_for(lambda: runs.record_batch_ids("killed"), timeout_s=60, what="the first acked batch")

        # When a random node is SIGKILLed every 1.5-3 s until the run has drained, each kill after
        # the pool acked at least one more batch (on a loaded machine, respawned nodes may need longer
        # to start than the kill interval: unconditional kills could then starve the pool for good)
        acked_at_last_kill = 0
        while len(runs.record_batch_ids("killed")) + len(runs.read_poison("killed")) < IMAGES // BATCH:
            time.sleep(rng.uniform(1.5, 3.0))
            alive = live_node_pids(settings)
            acked = len(runs.record_batch_ids("killed"))
            if alive and acked_at_last_kill < acked < IMAGES // BATCH:
                os.kill(rng.choice(alive), signal.SIGKILL)
                kills += 1
                acked_at_last_kill = acked
            assert time.monotonic() - started < 240, "the run did not drain within 4 minutes"

        # Then `wait` reports the run complete: every image scored, no batch poisoned
        waited = orchestration(settings, "wait", "--run", "killed", "--json", env=env)
        assert waited.code == 0, waited.stdout + waited.stderr
        report = waited.json()
        record = pool(settings)
        assert record is not None
        restarts = sum(n.restarts for n in record.nodes)

    assert kills >= 5, f"only {kills} kills happened; the scenario needs several"
    assert restarts >= kills - NODES, "the supervisor respawned the killed nodes"
    assert report["images"] == report["images_ok"] == IMAGES
    assert report["batches_poisoned"] == 0 and not report["missing_batches"]
    # The drain report counts each batch once, however often it was delivered
    assert sum(report["workers"].values()) == IMAGES

    # And the result files hold exactly one row per image, all scored
    rows = check_every_image_once(settings, "killed", names, tmp_path / "killed.jsonl")
    assert rows.rows == rows.ok == IMAGES and rows.duplicate_rows == 0

    records = runs.read_batch_records("killed")
    redelivered = sum(1 for r in records if r.attempt > 1)
    scored = scoring_count(ledger)
    assert scored.images >= IMAGES  # every batch was scored at least once
    figures_line(
        f"kill[{backend}]",
        seed=seed,
        images=IMAGES,
        batches=IMAGES // BATCH,
        nodes=NODES,
        kills=kills,
        respawns=restarts,
        batches_redelivered=redelivered,
        max_attempt=max(r.attempt for r in records),
        batches_scored_twice=scored.batches_scored_twice,
        images_scored_again=scored.images_scored_twice,
        **rows.figures(),
        poisoned=report["batches_poisoned"],
        drain_wall_s=report["drain_wall_s"],
        test_s=round(time.monotonic() - started, 1),
    )
