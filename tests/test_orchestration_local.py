"""The local pool end to end: real supervisor, real `consumer run` nodes, real signals.

Runs use the model-free `SleepTask` (a fixed sleep per image), so they take seconds and the
assertions are about what happened (who scored what, every image once), never about how fast.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.support.images import write_sample_images
from tests.support.orchestration_cli import (
    FAILING_TASK,
    SLEEP_TASK,
    enqueue,
    live_node_pids,
    orchestration,
    pool,
    torn_down,
)
from tests.support.slow_tasks import RENDEZVOUS_DIR_ENV, RENDEZVOUS_NODES_ENV, RENDEZVOUS_TASK
from tests.support.waiting import wait_for
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

pytestmark = pytest.mark.slow


def run_store(settings: Settings) -> RunStore:
    return RunStore(open_result_store(settings))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_nodes_added_mid_run_share_the_work_and_every_image_is_scored_once(settings: Settings, tmp_path: Path) -> None:
    # Given 200 images enqueued as 20 batches that take about a second each
    names = write_sample_images(tmp_path / "images", 200, (64, 48))
    # (a task whose first batches wait until three nodes score: a loaded machine still shares the work)
    enqueue(settings, tmp_path / "images", "scale", "--task", RENDEZVOUS_TASK, "--batch-size", "10")
    scoring = tmp_path / "scoring"
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.1", RENDEZVOUS_DIR_ENV: str(scoring), RENDEZVOUS_NODES_ENV: "3"}
    runs = run_store(settings)
    with torn_down(settings, env):
        # When two nodes start, and once they are scoring the pool grows to four from another shell
        launched = orchestration(settings, "launch", "--nodes", "2", env=env)
        assert launched.code == 0, launched.stderr
        wait_for(lambda: len(list(scoring.glob("*"))) >= 2, timeout_s=120, what="both first nodes scoring")
        scaled = orchestration(settings, "scale", "--nodes", "4", env=env)
        assert scaled.code == 0, scaled.stderr
        status = orchestration(settings, "status", "--run", "scale", "--json", env=env).json()
        assert status["cluster"]["target_nodes"] == 4
        assert [n["state"] for n in status["cluster"]["nodes"]] == ["running"] * 4
        assert status["runs"][0]["batches"] == 20

        # Then `wait` reports the whole run drained, by more than the two first nodes
        waited = orchestration(settings, "wait", "--run", "scale", "--json", env=env)
        assert waited.code == 0, waited.stderr
        report = waited.json()

    assert report["images"] == report["images_ok"] == 200
    assert report["batches"] == 20 and report["batches_poisoned"] == 0 and report["images_failed"] == 0
    assert sum(report["workers"].values()) == 200
    assert len(report["workers"]) > 2

    # and its wall time is first dequeue → last ack of the batch records
    records = runs.read_batch_records("scale")
    assert len(records) == 20
    wall_s = (max(r.acked_at for r in records) - min(r.dequeued_at for r in records)).total_seconds()
    assert report["drain_wall_s"] == pytest.approx(wall_s, abs=0.002)
    assert report["images_per_s"] == pytest.approx(200 / wall_s, rel=0.01)

    # and the exported results hold every image exactly once, in manifest order, from >2 workers
    out = tmp_path / "scale.csv"
    exported = orchestration(settings, "results", "--run", "scale", "--out", str(out))
    assert exported.code == 0, exported.stderr
    rows = read_csv(out)
    assert [r["image"] for r in rows] == names
    assert {r["status"] for r in rows} == {"ok"}
    assert len({r["worker"] for r in rows}) > 2
    assert Counter(r["worker"] for r in rows) == Counter(report["workers"])


@pytest.mark.faults
def test_a_node_killed_with_sigkill_is_respawned_and_nothing_is_lost(settings: Settings, tmp_path: Path) -> None:
    # Given a run of 10 one-second batches and a short lease, so a dead node's batch comes back soon
    names = write_sample_images(tmp_path / "images", 100, (64, 48))
    enqueue(settings, tmp_path / "images", "kill", "--task", SLEEP_TASK, "--batch-size", "10")
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.1", "WORKPOOL_VISIBILITY_TIMEOUT_S": "4"}
    runs = run_store(settings)
    with torn_down(settings, env):
        assert orchestration(settings, "launch", "--nodes", "2", env=env).code == 0
        wait_for(lambda: runs.record_batch_ids("kill"), timeout_s=60, what="the first acked batch")

        # When the first node is killed outright in the middle of the run
        record = pool(settings)
        assert record is not None
        victim = record.nodes[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)

        # Then the supervisor starts it again in the same slot
        def respawned() -> bool:
            current = pool(settings)
            node = next((n for n in current.nodes if n.id == victim.id), None) if current else None
            return node is not None and node.restarts == 1 and node.pid not in (None, victim.pid)

        wait_for(respawned, timeout_s=30, what=f"{victim.id} to be respawned")
        status = orchestration(settings, "status", "--json", env=env).json()
        node = next(n for n in status["cluster"]["nodes"] if n["id"] == victim.id)
        assert "killed by SIGKILL" in node["detail"]

        # and the run completes with every image scored exactly once
        waited = orchestration(settings, "wait", "--run", "kill", "--json", env=env)
        assert waited.code == 0, waited.stderr
        report = waited.json()
    assert report["images_ok"] == 100 and report["batches_poisoned"] == 0 and not report["missing_batches"]
    out = tmp_path / "kill.jsonl"
    assert orchestration(settings, "results", "--run", "kill", "--out", str(out)).code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows] == names
    assert all(r["status"] == "ok" for r in rows)


@pytest.mark.embedded
def test_launch_wait_drains_reports_and_tears_down(tmp_path: Path) -> None:
    from workpool.settings import load_settings

    settings = load_settings(home=tmp_path / "home", queue="waitq")
    write_sample_images(tmp_path / "images", 30, (64, 48))
    enqueue(settings, tmp_path / "images", "w1", "--task", SLEEP_TASK, "--batch-size", "5")
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.02"}
    with torn_down(settings, env):
        # When the pool is launched with --wait
        done = orchestration(settings, "launch", "--nodes", "2", "--wait", "--json", env=env)

        # Then it prints the pending run's drain report, and leaves no node running
        assert done.code == 0, done.stderr
        report = done.json()
        assert report["run_id"] == "w1" and report["images_ok"] == 30
        assert live_node_pids(settings) == []
        assert orchestration(settings, "status", "--json").json()["cluster"]["nodes"] == []

        # And the live view of a finished run draws its bar and returns
        watched = orchestration(settings, "status", "--run", "w1", "--watch", env={"COLUMNS": "120"})
        assert watched.code == 0, watched.stderr
        assert "6/6" in watched.stdout and "done" in watched.stdout


@pytest.mark.embedded
def test_scaling_down_stops_extra_nodes_gracefully(tmp_path: Path) -> None:
    from workpool.settings import load_settings

    settings = load_settings(home=tmp_path / "home", queue="downq")
    write_sample_images(tmp_path / "images", 40, (64, 48))
    enqueue(settings, tmp_path / "images", "down", "--task", SLEEP_TASK, "--batch-size", "5")
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.1"}
    runs = run_store(settings)
    with torn_down(settings, env):
        assert orchestration(settings, "launch", "--nodes", "3", env=env).code == 0
        wait_for(lambda: runs.record_batch_ids("down"), timeout_s=60, what="the first acked batch")
        before = pool(settings)
        assert before is not None
        third = before.nodes[2]

        # When the pool shrinks to one node mid-run
        assert orchestration(settings, "scale", "--nodes", "1", env=env).code == 0

        # Then the extra nodes exit (SIGTERM, not killed), their slots are gone, nothing is lost
        wait_for(lambda: len(getattr(pool(settings), "nodes", [])) == 1, timeout_s=40, what="two nodes to stop")
        log = (tmp_path / "home" / "local" / "downq" / "logs" / "supervisor.log").read_text()
        assert f"{third.id} stopped (exit 0)" in log
        # (the default 120 s lease is far beyond the wait's 40 s: only a released batch comes back in time)
        waited = orchestration(settings, "wait", "--run", "down", "--json", "--timeout-s", "40", env=env)
    assert waited.code == 0, waited.stderr
    assert waited.json()["images_ok"] == 40


@pytest.mark.embedded
@pytest.mark.faults
def test_a_poisoned_batch_fails_wait_and_becomes_error_rows(tmp_path: Path) -> None:
    from workpool.settings import load_settings

    settings = load_settings(home=tmp_path / "home", queue="poisonq")
    names = write_sample_images(tmp_path / "images", 6, (64, 48))
    enqueue(settings, tmp_path / "images", "bad", "--task", FAILING_TASK, "--batch-size", "3")
    env = {"WORKPOOL_MAX_ATTEMPTS": "1"}
    with torn_down(settings, env):
        # When every batch fails and may be tried only once
        done = orchestration(settings, "launch", "--nodes", "1", "--wait", "--json", env=env)

    # Then the drain report counts the poisoned batches and `launch --wait` exits 1
    assert done.code == 1, done.stderr
    report = done.json()
    assert report["batches_poisoned"] == 2 and report["images_failed"] == 6 and report["images_ok"] == 0
    [reason] = report["failures"]
    assert reason.startswith("poisoned: ") and report["failures"][reason] == 6
    assert orchestration(settings, "wait", "--run", "bad").code == 1

    # and the export still has one row per image, each an error with the poison reason
    out = tmp_path / "bad.parquet"
    assert orchestration(settings, "results", "--run", "bad", "--out", str(out)).code == 0
    import pyarrow.parquet as pq

    table = pq.read_table(out).to_pylist()
    assert [r["image"] for r in table] == names
    assert all(r["status"] == "error" and "FailingTask always fails" in r["error"] for r in table)
    assert open_queue(settings).depth().poison == 2


@pytest.mark.embedded
def test_nodes_added_from_another_shell_join_a_launch_wait(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.cli import ROOT, env_for
    from workpool.settings import load_settings

    settings = load_settings(home=tmp_path / "home", queue="joinq")
    write_sample_images(tmp_path / "images", 60, (64, 48))
    enqueue(settings, tmp_path / "images", "join", "--task", RENDEZVOUS_TASK, "--batch-size", "5")
    # No batch finishes until all three nodes score one; then the work (60 × 0.3 s over three nodes)
    # outlasts `scale`'s own wait for its nodes to stay up (3 s): the waiting launch, which tears the
    # pool down once the run drains, must not do so while `scale` is still waiting.
    scoring = tmp_path / "scoring"
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.3", RENDEZVOUS_DIR_ENV: str(scoring), RENDEZVOUS_NODES_ENV: "3"}
    with torn_down(settings, env):
        # Given `launch --nodes 1 --wait` blocking in one shell
        waiting = subprocess.Popen(
            [sys.executable, "-m", "orchestration", "launch", "--nodes", "1", "--wait", "--json"],
            env=env_for(settings, **env),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: any(scoring.glob("*")), timeout_s=120, what="the first node scoring")

            # When another shell scales the pool to three nodes
            assert orchestration(settings, "scale", "--nodes", "3", env=env).code == 0

            # Then the waiting launch reports work done by all three, and tears them all down
            out, err = waiting.communicate(timeout=120)
        finally:
            if waiting.poll() is None:
                waiting.kill()
    assert waiting.returncode == 0, err
    report = json.loads(out)
    assert report["images_ok"] == 60 and len(report["workers"]) == 3
    assert live_node_pids(settings) == []


@pytest.mark.embedded
def test_a_local_pool_far_beyond_the_machine_needs_force(tmp_path: Path) -> None:
    from orchestration.deployment import active_backend
    from orchestration.local_state import state_dir
    from workpool.settings import load_settings

    settings = load_settings(home=tmp_path / "home", queue="bigq")
    most = 4 * (os.cpu_count() or 1)
    with torn_down(settings):
        # When a user asks for 100,000 local nodes, for real, as a dry run, or as a scale
        for args in (["launch", "--nodes", "100000"], ["launch", "--nodes", "100000", "--dry-run"],
                     ["launch", "--nodes", "100000", "--wait"], ["scale", "--nodes", str(most + 1)]):  # fmt: skip
            out = orchestration(settings, *args)

            # Then each is refused with exit 2 and one line that names the limit and --force
            assert out.code == 2, (args, out.stderr)
            assert "pass --force" in out.stderr and f"at most {most}" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr and "tore down" not in out.stderr
            # and nothing was started or recorded
            assert pool(settings) is None and not state_dir(settings).exists()
            assert active_backend(settings) is None

        # And --force lets it through (planned here: starting that many processes is the point)
        forced = orchestration(settings, "launch", "--nodes", str(most + 1), "--dry-run", "--force", "--json")
        assert forced.code == 0, forced.stderr
        assert len(forced.json()["requests"]) == most + 2  # the supervisor and every node
