"""A run's whole life through the real CLIs: list, cancel, delete, inspect and purge poison.

Real processes on both backends: `producer enqueue`, `orchestration launch` (local nodes running
the real consumer), `orchestration runs|cancel|delete|poison|wait|status`. A batch "in flight"
is one really leased from the queue by the test, as a consumer that went quiet would hold it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.images import write_sample_images
from tests.support.orchestration_cli import FAILING_TASK, SLEEP_TASK, enqueue, orchestration, torn_down
from tests.support.waiting import wait_for
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

pytestmark = [pytest.mark.slow]


def images(folder: Path, count: int) -> Path:
    write_sample_images(folder, count, (32, 24))
    return folder


def run_store(settings: Settings) -> RunStore:
    return RunStore(open_result_store(settings))


def listed(settings: Settings) -> dict[str, dict[str, object]]:
    out = orchestration(settings, "runs", "--json")
    assert out.code == 0, out.stderr
    return {r["run_id"]: r for r in out.json()}


def test_cancel_takes_the_waiting_batches_off_the_queue_and_keeps_the_results_so_far(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a run of 24 batches being scored slowly (2 s a batch) by one node
    enqueue(settings, images(tmp_path / "images", 48), "slow", "--task", SLEEP_TASK, "--batch-size", "2")
    assert listed(settings)["slow"]["state"] == "pending"
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "1.0"}
    runs = run_store(settings)
    with torn_down(settings, env):
        assert orchestration(settings, "launch", "--nodes", "1", env=env).code == 0
        wait_for(lambda: len(runs.result_batch_ids("slow")) >= 2, timeout_s=120, what="two batches done")
        assert listed(settings)["slow"]["state"] == "running"

        # When it is cancelled
        out = orchestration(settings, "cancel", "--run", "slow", "--json")

        # Then its waiting batches left the queue, and only those in flight are left to finish
        assert out.code == 0, out.stderr
        cancelled = out.json()
        assert cancelled["messages_removed"] >= 1
        assert cancelled["messages_removed"] + cancelled["batches_done"] <= 24
        queue = open_queue(settings)
        wait_for(lambda: queue.depth().messages == 0, timeout_s=60, what="the in-flight batches finished or dropped")

        # And `wait` and `status` say so (wait exits 1: the run did not drain)
        waited = orchestration(settings, "wait", "--run", "slow")
        assert waited.code == 1, waited.stderr
        assert "cancelled at" in waited.stdout and "cancelled" in waited.stdout.splitlines()[4]
        status = orchestration(settings, "status", "--run", "slow", "--json")
        assert status.json()["runs"][0]["state"] == "cancelled"
        text = orchestration(settings, "status", "--run", "slow", env={"COLUMNS": "200"})
        assert "cancelled" in text.stdout

    # And every batch done is whole: its results hold all its images; nothing else was scored
    manifest = runs.read_manifest("slow")
    done = runs.result_batch_ids("slow")
    assert 2 <= len(done) <= 24 - cancelled["messages_removed"]
    if cancelled["in_flight"] is not None:  # the embedded queue: only what was in flight was still done
        assert len(done) <= cancelled["batches_done"] + cancelled["in_flight"]
    for batch_id in done:
        assert [r.image for r in runs.read_results("slow", batch_id)] == manifest.batches[batch_id]
    summary = listed(settings)["slow"]
    assert (summary["state"], summary["batches_done"]) == ("cancelled", len(done))


def test_a_batch_of_a_cancelled_run_that_comes_back_is_dropped_unscored(settings: Settings, tmp_path: Path) -> None:
    # Given a run of 3 batches, one of them held by a consumer that goes quiet (a 3 s lease)
    enqueue(settings, images(tmp_path / "images", 6), "quiet", "--task", SLEEP_TASK, "--batch-size", "2")
    queue = open_queue(settings)
    [held] = queue.receive(1, visibility_timeout_s=3)

    # When the run is cancelled, then a node starts
    out = orchestration(settings, "cancel", "--run", "quiet", "--json")
    assert out.code == 0, out.stderr
    assert out.json()["messages_removed"] == 2
    assert out.json()["in_flight"] in (1, None)  # the embedded queue sees the leased one; Azure cannot
    with torn_down(settings):
        assert orchestration(settings, "launch", "--nodes", "1").code == 0

        # Then the held batch, back on the queue once its lease ran out, is dropped by the node
        wait_for(lambda: queue.depth().messages == 0, timeout_s=90, what="the returned batch dropped")

    # And nothing was scored
    assert run_store(settings).result_batch_ids("quiet") == set()
    assert held.body  # it was a real batch message


def test_delete_is_refused_while_a_batch_is_in_flight_then_removes_everything(
    settings: Settings, backend: str, tmp_path: Path
) -> None:
    # Given a run with one batch held by a consumer
    enqueue(settings, images(tmp_path / "images", 4), "gone", "--task", SLEEP_TASK, "--batch-size", "2")
    queue = open_queue(settings)
    queue.receive(1, visibility_timeout_s=120)

    # When it is deleted without --force: refused (exit 2, naming --force), the run left cancelled
    refused = orchestration(settings, "delete", "--run", "gone")
    assert refused.code == 2, refused.stdout + refused.stderr
    assert "in flight" in refused.stderr and "--force" in refused.stderr
    assert listed(settings)["gone"]["state"] == "cancelled"

    # When it is deleted with --force: the run and its waiting batch are gone
    forced = orchestration(settings, "delete", "--run", "gone", "--force")
    assert forced.code == 0, forced.stderr
    assert "deleted run gone" in forced.stdout
    assert "gone" not in listed(settings)
    assert not run_store(settings).has_manifest("gone")
    assert list(run_store(settings).store.list("runs/gone/")) == []
    assert queue.depth().visible == 0

    # And deleting again is no error
    again = orchestration(settings, "delete", "--run", "gone")
    assert again.code == 0, again.stderr
    assert "does not exist" in again.stdout


def test_poisoned_batches_are_listed_purged_and_deleted_with_their_run(settings: Settings, tmp_path: Path) -> None:
    # Given two runs whose every batch fails on its one allowed attempt
    source = images(tmp_path / "images", 4)
    enqueue(settings, source, "bad-1", "--task", FAILING_TASK, "--batch-size", "2")
    enqueue(settings, source, "bad-2", "--task", FAILING_TASK, "--batch-size", "4")
    env = {"WORKPOOL_MAX_ATTEMPTS": "1"}
    with torn_down(settings, env):
        assert orchestration(settings, "launch", "--nodes", "1", env=env).code == 0
        for run_id in ("bad-1", "bad-2"):
            assert orchestration(settings, "wait", "--run", run_id, env=env).code == 1

    # When the poison is listed: every batch with its reason, attempts and time
    out = orchestration(settings, "poison", "--json")
    assert out.code == 0, out.stderr
    entries = out.json()
    assert sorted((e["run_id"], e["batch_id"], e["attempts"]) for e in entries) == [
        ("bad-1", "b000000", 1),
        ("bad-1", "b000001", 1),
        ("bad-2", "b000000", 1),
    ]
    assert all("FailingTask always fails" in e["reason"] and e["poisoned_at"] for e in entries)
    text = orchestration(settings, "poison", "--run", "bad-2")
    assert "bad-2  b000000  4 images  1 attempt(s)" in text.stdout and "bad-1" not in text.stdout
    status = orchestration(settings, "status", "--run", "bad-2", env={"COLUMNS": "200"})
    [row] = [line for line in status.stdout.splitlines() if "bad-2" in line]
    assert row.rstrip(" │").endswith("ended, 1 poisoned")  # the ETA column: not "done"
    waited = orchestration(settings, "wait", "--run", "bad-2")
    assert "in 1 batch " in waited.stdout.splitlines()[0] + " "

    # Then a purge needs a run or --all, and purges only that run's
    assert orchestration(settings, "poison", "--purge").code == 2
    purged = orchestration(settings, "poison", "--purge", "--run", "bad-1", "--json")
    assert purged.code == 0, purged.stderr
    assert (purged.json()["reports_removed"], purged.json()["records_removed"]) == (2, 2)
    assert [e["run_id"] for e in orchestration(settings, "poison", "--json").json()] == ["bad-2"]
    assert open_queue(settings).depth().poison == 1

    # And deleting the other run removes its poison records with it
    assert orchestration(settings, "delete", "--run", "bad-2").code == 0
    assert orchestration(settings, "poison", "--json").json() == []
    assert open_queue(settings).depth().poison == 0
