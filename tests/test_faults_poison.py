"""The poison path: one batch fails every time; it is dead-lettered, the rest completes, and after
the fault is fixed `producer requeue --failed` finishes the run.

The fault is a data-dependent bug in the scoring task (`TrippingTask`: a batch holding a pure red
image fails in `predict`); "deploying the fix" is creating the file `WORKPOOL_FAULTS_FIXED` names,
which the running nodes read on every batch. Nothing is restarted in between.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.faults_pool import (
    check_every_image_once,
    enqueue_run,
    figures_line,
    run_store,
    scoring_count,
    unique_images,
)
from tests.support.faults_tasks import FIXED_ENV, LEDGER_ENV, TRIP_COLOUR, TRIPPING_TASK
from tests.support.images import solid_color_image, stage_folder
from tests.support.orchestration_cli import orchestration, torn_down
from workpool.queue import PoisonRecord, open_queue
from workpool.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

MAX_ATTEMPTS = 3


def test_a_batch_failing_every_time_is_poisoned_named_and_requeued_after_the_fix(
    settings: Settings, backend: str, tmp_path: Path
) -> None:
    # Given 60 images and one pure red one, in batches of 6: the red one's batch trips the bug
    names = unique_images(tmp_path / "images", 60)
    names = sorted([*names, solid_color_image(tmp_path / "images", "img_00031_red.png", TRIP_COLOUR, (32, 32))])
    source = stage_folder(settings, tmp_path / "images")
    enqueue_run(settings, source, "poisoned", "--task", TRIPPING_TASK, "--batch-size", "6")
    runs = run_store(settings)
    manifest = runs.read_manifest("poisoned")
    [bad_batch] = [b for b, images in manifest.batches.items() if "img_00031_red.png" in images]
    fixed, ledger = tmp_path / "fix-deployed", tmp_path / "ledger.txt"
    env = {
        "WORKPOOL_EXAMPLE_SLEEP_S": "0.02",
        "WORKPOOL_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        FIXED_ENV: str(fixed),
        LEDGER_ENV: str(ledger),
    }
    with torn_down(settings, env):
        # When two nodes work through the run
        assert orchestration(settings, "launch", "--nodes", "2", env=env).code == 0
        first = orchestration(settings, "wait", "--run", "poisoned", "--json", env=env)

        # Then `wait` exits 1 naming the poisoned batch and its reason; every other batch is done
        assert first.code == 1, first.stdout + first.stderr
        report = first.json()
        assert report["batches_poisoned"] == 1
        assert report["batches_done"] == len(manifest.batches) - 1
        assert report["images_ok"] == len(names) - len(manifest.batches[bad_batch])
        assert bad_batch in report["poisoned_batches"]
        assert "TrippingTask" in report["poisoned_batches"][bad_batch]
        text = orchestration(settings, "wait", "--run", "poisoned", env=env)
        assert text.code == 1 and bad_batch in text.stdout and "requeue --run poisoned --failed" in text.stdout

        # and it was dead-lettered after exactly --max-attempts deliveries, with its last error
        [poison] = runs.read_poison("poisoned")
        assert poison.batch_id == bad_batch and poison.attempts == MAX_ATTEMPTS
        assert f"failed {MAX_ATTEMPTS} times" in poison.reason and "pure red image" in poison.reason
        with open_queue(settings) as queue:
            assert queue.depth().poison == 1
            [held] = queue.poison().receive(1, visibility_timeout_s=1)
            assert PoisonRecord.decode(held.body).attempts == MAX_ATTEMPTS
            queue.poison().release(held)

        # When the fix is deployed and the poisoned batch is requeued
        fixed.touch()
        requeued = run_cli("producer", settings, "requeue", "--run", "poisoned", "--failed", "--json", env=env)
        assert requeued.code == 0, requeued.stderr
        assert requeued.json()["batch_ids"] == [bad_batch]
        second = orchestration(settings, "wait", "--run", "poisoned", "--json", env=env)

    # Then the run finishes: every image scored once, the poison queue and report are gone
    assert second.code == 0, second.stdout + second.stderr
    assert second.json()["images_ok"] == len(names) and second.json()["batches_poisoned"] == 0
    rows = check_every_image_once(settings, "poisoned", names, tmp_path / "poisoned.jsonl")
    assert rows.rows == rows.ok == len(names)
    assert runs.read_poison("poisoned") == []
    with open_queue(settings) as queue:
        assert queue.depth().poison == 0
    scored = scoring_count(ledger)
    assert scored.batches_scored_twice == 0  # the bad batch never got as far as a result before the fix
    figures_line(
        f"poison[{backend}]",
        images=len(names),
        batches=len(manifest.batches),
        poisoned_batch=bad_batch,
        attempts=poison.attempts,
        wait_exit_before_fix=first.code,
        requeued=len(requeued.json()["batch_ids"]),
        wait_exit_after_fix=second.code,
        **rows.figures(),
    )
