"""Storage outages mid-run: the consumers and the producer wait them out and nothing is lost.

Azure: the test's own Azurite, persisting to disk, is stopped for 15 s while four consumer nodes
are scoring run A and `producer enqueue` is sending run B (400 one-image batches), then
restarted on the same ports with its data. Embedded: another connection holds the SQLite write
lock for 15 s while the nodes score run A and `producer enqueue` of run B starts.

Both runs must finish with exactly one row per image and no poisoned batch; the producer must
exit 0 having sent every batch once (the consumers' one row per image proves none is missing).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.azurite import Azurite
from tests.support.cli import ROOT, env_for
from tests.support.faults_pool import (
    DatabaseLock,
    check_every_image_once,
    enqueue_run,
    figures_line,
    node_logs,
    run_store,
    scoring_count,
    staged_images,
    stopped_for,
    unique_images,
)
from tests.support.faults_tasks import LEDGER_ENV, LEDGER_TASK
from tests.support.orchestration_cli import orchestration, torn_down
from tests.support.waiting import wait_for
from workpool.settings import Settings, load_settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

OUTAGE_S = 15.0
A_IMAGES, A_BATCH, B_IMAGES, NODES = 200, 5, 400, 4


def start_producer(settings: Settings, source: Path, run_id: str) -> subprocess.Popen[str]:
    """`producer enqueue` of run B in the background: 400 one-image batches (4 send chunks)."""
    return subprocess.Popen(
        [sys.executable, "-m", "producer", "enqueue", str(source), "--run", run_id, "--json",
         "--task", LEDGER_TASK, "--batch-size", "1"],
        env=env_for(settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def finish_and_check(settings: Settings, env: dict[str, str], tmp_path: Path, b_names: list[str]) -> dict[str, int]:
    """Both runs drained through `wait`, then one row per image each; returns the row figures."""
    figures: dict[str, int] = {}
    for run_id, names in (("run-a", None), ("run-b", b_names)):
        waited = orchestration(settings, "wait", "--run", run_id, "--json", env=env, timeout_s=240)
        assert waited.code == 0, waited.stdout + waited.stderr
        report = waited.json()
        assert report["batches_poisoned"] == 0 and not report["missing_batches"]
        assert report["images_ok"] == report["images"]
        if names is None:
            names = sorted(run_store(settings).read_manifest(run_id).batch_of_image())
        rows = check_every_image_once(settings, run_id, names, tmp_path / f"{run_id}.jsonl")
        assert rows.rows == rows.ok == len(names) and rows.duplicate_rows == 0
        figures[f"{run_id}_rows"] = rows.rows
        figures[f"{run_id}_duplicate_rows"] = rows.duplicate_rows
    return figures


def redelivered(settings: Settings) -> int:
    runs = run_store(settings)
    return sum(1 for run_id in ("run-a", "run-b") for r in runs.read_batch_records(run_id) if r.attempt > 1)


@pytest.mark.azurite
def test_azurite_stopped_for_15_s_mid_run_and_restarted(own_azurite: Azurite, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", queue="outage", results="outage-results",
                             connection_string=own_azurite.connection_string)  # fmt: skip
    # Given run A (200 images in blobs, 40 batches) being scored by four nodes
    a_source, _ = staged_images(settings, tmp_path / "a", A_IMAGES)
    enqueue_run(settings, a_source, "run-a", "--task", LEDGER_TASK, "--batch-size", str(A_BATCH))
    b_names = unique_images(tmp_path / "b", B_IMAGES, prefix="b_")
    ledger = tmp_path / "ledger.txt"
    # 0.2 s per image keeps run A going for ~10 s, well past the producer's start-up (~2 s), so
    # the outage falls mid-run even on a quiet machine.
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.2", "WORKPOOL_VISIBILITY_TIMEOUT_S": "4", LEDGER_ENV: str(ledger)}
    runs = run_store(settings)
    with torn_down(settings, env):
        assert orchestration(settings, "launch", "--nodes", str(NODES), env=env).code == 0
        wait_for(lambda: runs.record_batch_ids("run-a"), timeout_s=60, what="run A's first acked batch")

        # When run B starts sending and, as soon as its manifest is written, storage goes away for 15 s
        producer = start_producer(settings, tmp_path / "b", "run-b")
        wait_for(lambda: runs.has_manifest("run-b"), timeout_s=30, interval_s=0.01, what="run B's manifest")
        a_done_before = len(runs.record_batch_ids("run-a"))
        outage_started = time.monotonic()
        with stopped_for(own_azurite, OUTAGE_S) as back:
            back.wait(OUTAGE_S + 30)
        outage_s = time.monotonic() - outage_started

        # Then the producer rode it out: it retried, then sent everything and exited 0
        out, err = producer.communicate(timeout=180)
        assert producer.returncode == 0, err
        assert "retrying" in err, "the outage fell while the producer was sending"
        assert f'"batches": {B_IMAGES}' in out
        figures = finish_and_check(settings, env, tmp_path, b_names)
        logs = node_logs(settings)

    # and the consumers backed off (they said so) without crashing: no node was respawned
    assert "unreachable" in logs
    assert "respawning" not in logs
    assert a_done_before < A_IMAGES // A_BATCH, "run A was still going when storage went away"
    scored = scoring_count(ledger)
    figures_line(
        "outage[azurite]",
        outage_s=round(outage_s, 1),
        images=A_IMAGES + B_IMAGES,
        a_batches_done_before=a_done_before,
        producer_retries=err.count("retrying"),
        consumer_outage_warnings=logs.count("unreachable"),
        batches_redelivered=redelivered(settings),
        batches_scored_twice=scored.batches_scored_twice,
        **figures,
    )


@pytest.mark.embedded
def test_embedded_database_locked_for_15_s_mid_run(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", queue="locked")
    # Given run A being scored by four nodes
    a_source, _ = staged_images(settings, tmp_path / "a", A_IMAGES)
    enqueue_run(settings, a_source, "run-a", "--task", LEDGER_TASK, "--batch-size", str(A_BATCH))
    b_names = unique_images(tmp_path / "b", B_IMAGES, prefix="b_")
    ledger = tmp_path / "ledger.txt"
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.1", "WORKPOOL_VISIBILITY_TIMEOUT_S": "4", LEDGER_ENV: str(ledger)}
    runs = run_store(settings)
    lock = DatabaseLock(settings.home / "queue.sqlite3")
    with torn_down(settings, env):
        assert orchestration(settings, "launch", "--nodes", str(NODES), env=env).code == 0
        wait_for(lambda: runs.record_batch_ids("run-a"), timeout_s=60, what="run A's first acked batch")

        # When another connection takes the database's write lock for 15 s, and run B is enqueued meanwhile
        lock.acquire()
        a_done_before = len(runs.record_batch_ids("run-a"))
        try:
            producer = start_producer(settings, tmp_path / "b", "run-b")
            time.sleep(OUTAGE_S)
            assert producer.poll() is None, "the producer waits for the lock"
        finally:
            lock.release()

        # Then the producer carried on once the lock was gone and sent every batch
        out, err = producer.communicate(timeout=180)
        assert producer.returncode == 0, err
        assert f'"batches": {B_IMAGES}' in out
        figures = finish_and_check(settings, env, tmp_path, b_names)
        logs = node_logs(settings)

    assert "respawning" not in logs
    assert a_done_before < A_IMAGES // A_BATCH, "run A was still going when the database locked"
    scored = scoring_count(ledger)
    figures_line(
        "outage[embedded]",
        lock_held_s=round(lock.held_s, 1),
        images=A_IMAGES + B_IMAGES,
        a_batches_done_before=a_done_before,
        consumer_lock_warnings=logs.count("locked"),
        batches_redelivered=redelivered(settings),
        batches_scored_twice=scored.batches_scored_twice,
        **figures,
    )


@pytest.mark.azurite
@pytest.mark.faults
def test_a_consumer_started_while_storage_is_down_waits_it_out_and_a_stop_ends_the_wait(
    own_azurite: Azurite, tmp_path: Path
) -> None:
    settings = load_settings(home=tmp_path / "home", queue="late", results="late-results",
                             connection_string=own_azurite.connection_string)  # fmt: skip
    env = env_for(settings, WORKPOOL_IDLE_EXIT_S="3")
    # Given storage that is down when two consumers start (a node booting before its network)
    own_azurite.stop()
    logs = [tmp_path / f"late-{i}.log" for i in (1, 2)]
    waiting = []
    for i, log in enumerate(logs, start=1):
        with open(log, "w") as out:
            command = [sys.executable, "-m", "consumer", "run", "--workers", "1", "--worker-id", f"late-{i}"]
            waiting.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
    try:
        for log in logs:  # both are past their imports and retrying
            wait_for(lambda log=log: "unreachable" in log.read_text(), timeout_s=120, what=f"{log.name} retrying")
        assert all(p.poll() is None for p in waiting), "a consumer gave up on unreachable storage at start"

        # When one is told to stop during the wait, it stops at once and cleanly
        waiting[0].terminate()
        assert waiting[0].wait(timeout=30) == 0, logs[0].read_text()
        assert "Processed 0 images" in logs[0].read_text()

        # And when storage comes back, the other one goes on: it creates what it needs and works
        own_azurite.start()
        assert waiting[1].wait(timeout=120) == 0, logs[1].read_text()  # idle-exit once it sees the empty queue
        assert "Processed 0 images" in logs[1].read_text()
        from workpool.queue import open_queue

        with open_queue(settings) as queue:
            assert queue.depth().messages == 0  # the queue exists: the consumer made it
    finally:
        for p in waiting:
            if p.poll() is None:
                p.kill()
                p.wait()
