"""Slow batches: scoring takes 3.5× the visibility timeout, and each batch is still scored once.

Without lease renewal every batch would reappear on the queue after 1 s and be scored again by the
other node (and again, and again); with it each batch is held until it is acked. The ledger task
counts real scoring calls in every process, and the drain report must count each batch once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.faults_pool import (
    check_every_image_once,
    enqueue_run,
    figures_line,
    node_logs,
    run_store,
    scoring_count,
    staged_images,
)
from tests.support.faults_tasks import LEDGER_ENV, LEDGER_TASK
from tests.support.orchestration_cli import orchestration, torn_down
from workpool.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

IMAGES, BATCH, VISIBILITY_S, SECONDS_PER_IMAGE = 8, 2, 1, 1.75


def test_batches_scoring_for_three_leases_are_scored_once(settings: Settings, backend: str, tmp_path: Path) -> None:
    # Given four batches that each take 3.5 s to score under a 1 s visibility timeout, and two nodes
    source, names = staged_images(settings, tmp_path / "images", IMAGES)
    enqueue_run(settings, source, "slow", "--task", LEDGER_TASK, "--batch-size", str(BATCH))
    ledger = tmp_path / "ledger.txt"
    env = {
        "WORKPOOL_EXAMPLE_SLEEP_S": str(SECONDS_PER_IMAGE),
        "WORKPOOL_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        LEDGER_ENV: str(ledger),
    }

    # When the pool drains the run
    with torn_down(settings, env):
        assert orchestration(settings, "launch", "--nodes", "2", env=env).code == 0
        waited = orchestration(settings, "wait", "--run", "slow", "--json", env=env)
        assert waited.code == 0, waited.stdout + waited.stderr
        report = waited.json()
        logs = node_logs(settings)

    # Then every batch was scored exactly once, in one delivery, and acked by its only scorer
    scored = scoring_count(ledger)
    assert scored.calls == IMAGES // BATCH and scored.images == IMAGES and scored.batches_scored_twice == 0
    records = run_store(settings).read_batch_records("slow")
    assert sorted(r.attempt for r in records) == [1] * (IMAGES // BATCH)
    assert all((r.scored_at - r.dequeued_at).total_seconds() >= 3 * VISIBILITY_S for r in records)
    assert "lease lost" not in logs and "was lost" not in logs

    # and the drain report counts no duplicate work
    assert report["batches_done"] == IMAGES // BATCH and report["images_ok"] == IMAGES
    assert sum(report["workers"].values()) == IMAGES
    assert sum(report["worker_batches"].values()) == IMAGES // BATCH
    rows = check_every_image_once(settings, "slow", names, tmp_path / "slow.jsonl")
    assert rows.rows == rows.ok == IMAGES
    figures_line(
        f"slow[{backend}]",
        images=IMAGES,
        batches=IMAGES // BATCH,
        visibility_timeout_s=VISIBILITY_S,
        score_s_per_batch=SECONDS_PER_IMAGE * BATCH,
        scoring_calls=scored.calls,
        batches_scored_twice=scored.batches_scored_twice,
        max_attempt=max(r.attempt for r in records),
        report_images=sum(report["workers"].values()),
        **rows.figures(),
    )
