"""Bad images mixed into a run: one row each (scored, or an error with its reason), and no crash.

The consumer issue's corpus (corrupt, truncated, zero bytes, text named .jpg, a decompression bomb,
CMYK, 16-bit, paletted, grayscale, RGBA, animated, EXIF-rotated, and a name whose file is missing)
is enqueued with good images through a list file, and drained by a pool of two nodes.
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
    unique_images,
)
from tests.support.images import MISSING_IMAGE, stage_folder, write_bad_image_corpus
from tests.support.orchestration_cli import orchestration, torn_down
from workpool.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_the_bad_image_corpus_mixed_into_a_run_gives_one_row_each(
    settings: Settings, backend: str, tmp_path: Path
) -> None:
    # Given 40 good images and the bad-image corpus in one folder, listed with one missing name
    folder = tmp_path / "mixed"
    good = unique_images(folder, 40)
    expected = {name: "ok" for name in good} | write_bad_image_corpus(folder)
    source = stage_folder(settings, folder)
    names = sorted(expected)
    # (names relative to the list file's folder on disk; full az:// locations for blobs)
    listing = folder / "images.txt" if backend == "embedded" else tmp_path / "images.txt"
    lines = names if backend == "embedded" else [f"{source}/{name}" for name in names]
    listing.write_text("\n".join(lines) + "\n")
    enqueue_run(settings, f"@{listing}", "mixed", "--task", "consumer.tasks.examples:SleepTask", "--batch-size", "8")

    # When a pool of two nodes drains it
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.01"}
    with torn_down(settings, env):
        done = orchestration(settings, "launch", "--nodes", "2", "--wait", "--json", env=env, timeout_s=180)
        logs = node_logs(settings)

    # Then the run completes (bad images are error rows, not failures of the run) with no node lost
    assert done.code == 0, done.stdout + done.stderr
    report = done.json()
    assert report["batches_poisoned"] == 0
    assert "died" not in logs and "Traceback" not in logs

    # and every image has exactly one row, with the status the corpus expects and a reason for errors
    rows = check_every_image_once(settings, "mixed", names, tmp_path / "mixed.jsonl")
    runs = run_store(settings)
    by_image = {row.image: row for b in runs.result_batch_ids("mixed") for row in runs.read_results("mixed", b)}
    assert {name: row.status for name, row in by_image.items()} == expected
    assert by_image[MISSING_IMAGE].error == "not found"
    assert "decompression bomb" in (by_image["bomb.png"].error or "")
    assert report["images_failed"] == sum(1 for s in expected.values() if s == "error")
    figures_line(
        f"bad-images[{backend}]",
        images=len(names),
        corpus=len(expected) - len(good),
        **rows.figures(),
        poisoned=report["batches_poisoned"],
        node_crashes=logs.count("died"),
    )
