"""`producer requeue --failed` and `--missing`, end to end through the CLI, on both backends.

The consumer's part (receive, write results, ack, or dead-letter with a poison report) is played
by the test with the real queue and run store, so the requeue meets exactly what a consumer
leaves behind.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.producer_cli import drain_messages, producer
from workpool.messages import BatchMessage
from workpool.queue import PoisonRecord, WorkQueue, open_queue
from workpool.queue.base import now_iso
from workpool.runs import PoisonReport, ResultRow, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store


def enqueue_run(settings: Settings, tmp_path: Path, run_id: str, images: int, batch_size: int = 2) -> None:
    folder = tmp_path / run_id
    folder.mkdir()
    for i in range(images):
        (folder / f"{run_id}-{i:02d}.jpg").write_bytes(b"x")
    out = producer(settings, "enqueue", str(folder), "--run", run_id, "--batch-size", str(batch_size),
                   "--task", "consumer.tasks.examples:SleepTask")  # fmt: skip
    assert out.code == 0, out.stderr


def consume(
    settings: Settings, queue: WorkQueue, *, poison: set[tuple[str, str]], lose: set[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """Play the consumers: score every batch, except those to `poison` (dead-lettered with a
    report) and those to `lose` (deleted without a result, like an expired message).
    Returns the bodies of the poisoned messages."""
    runs = RunStore(open_result_store(settings))
    poisoned: dict[tuple[str, str], str] = {}
    while received := queue.receive(32, visibility_timeout_s=60):
        for message in received:
            batch = BatchMessage.decode(message.body)
            key = (batch.run_id, batch.batch_id)
            if key in poison:
                queue.dead_letter(message, "model exploded")
                poisoned[key] = message.body
                runs.write_poison(PoisonReport(run_id=batch.run_id, batch_id=batch.batch_id, reason="boom", attempts=5))
                continue
            if key not in lose:
                rows = [ResultRow(image=i, status="ok", batch_id=batch.batch_id, worker="w1") for i in batch.images]
                runs.write_results(batch.run_id, batch.batch_id, rows)
            queue.ack(message)
    return poisoned


def test_requeue_failed_sends_back_only_this_runs_batches(settings: Settings, tmp_path: Path) -> None:
    # Given two runs whose consumers poisoned a batch each, an unreadable record in poison, and a
    # second record of alpha's batch (a consumer crashed between dead-lettering and deleting)
    enqueue_run(settings, tmp_path, "alpha", images=6)
    enqueue_run(settings, tmp_path, "beta", images=4)
    with open_queue(settings) as queue, queue.poison() as poison:
        poisoned = consume(settings, queue, poison={("alpha", "b000001"), ("beta", "b000000")}, lose=set())
        poison.send(["not a poison record at all"])
        copy = PoisonRecord(body=poisoned[("alpha", "b000001")], reason="x", attempts=5, dead_lettered_at=now_iso())
        poison.send([copy.encode()])
        assert queue.depth().poison == 4

    # When alpha's failed batches are requeued
    out = producer(settings, "requeue", "--run", "alpha", "--failed", "--json")

    # Then exactly alpha's poisoned batch is back on the work queue as its original message
    assert out.code == 0, out.stderr
    summary = out.json()
    assert (summary["requeued"], summary["batch_ids"], summary["images"]) == (1, ["b000001"], 2)
    assert (summary["left_in_poison"], summary["duplicates_dropped"]) == (2, 1)
    runs = RunStore(open_result_store(settings))
    manifest = runs.read_manifest("alpha")
    with open_queue(settings) as queue, queue.poison() as poison:
        [again] = queue.receive(32, visibility_timeout_s=60)
        batch = BatchMessage.decode(again.body)
        assert (batch.run_id, batch.batch_id, batch.images) == ("alpha", "b000001", manifest.batches["b000001"])
        assert again.dequeue_count == 1  # a fresh message: the attempt count starts over
        queue.ack(again)

        # And the other records are visible in poison again at once, untouched
        left = poison.receive(32, visibility_timeout_s=60)
        assert len(left) == 2
        assert "not a poison record at all" in {m.body for m in left}
        for message in left:
            poison.release(message)

    # And alpha's poison report is gone, beta's stays
    assert runs.read_poison("alpha") == []
    assert [r.batch_id for r in runs.read_poison("beta")] == ["b000000"]

    # And a second requeue finds nothing more of alpha's
    out = producer(settings, "requeue", "--run", "alpha", "--failed")
    assert out.code == 0, out.stderr
    assert "Requeued 0 failed batches" in out.stdout


def test_requeue_missing_resends_batches_without_results(settings: Settings, tmp_path: Path) -> None:
    # Given a run of four batches where two messages were lost before any result was written
    enqueue_run(settings, tmp_path, "gamma", images=8)
    with open_queue(settings) as queue:
        consume(settings, queue, poison=set(), lose={("gamma", "b000001"), ("gamma", "b000003")})
        assert queue.depth().messages == 0

    # When the missing batches are requeued
    out = producer(settings, "requeue", "--run", "gamma", "--missing", "--json")

    # Then those two, and only those, are sent again as the manifest recorded them
    assert out.code == 0, out.stderr
    summary = out.json()
    assert (summary["requeued"], summary["batch_ids"], summary["batches"], summary["with_results"]) == (
        2,
        ["b000001", "b000003"],
        4,
        2,
    )
    assert "may be scored twice" in out.stderr  # the in-flight warning
    manifest = RunStore(open_result_store(settings)).read_manifest("gamma")
    resent = drain_messages(settings)
    assert {m.batch_id: m.images for m in resent} == {b: manifest.batches[b] for b in ("b000001", "b000003")}
    assert {(m.source, m.task) for m in resent} == {(manifest.source, manifest.task)}

    # And once they have results, there is nothing left to requeue
    runs = RunStore(open_result_store(settings))
    for batch_id in ("b000001", "b000003"):
        runs.write_results("gamma", batch_id, [])
    out = producer(settings, "requeue", "--run", "gamma", "--missing")
    assert out.code == 0, out.stderr
    assert "Nothing to requeue: all 4 batches of run gamma have results." in out.stdout


def test_requeue_needs_a_known_run_and_exactly_one_mode(settings: Settings, tmp_path: Path) -> None:
    unknown = producer(settings, "requeue", "--run", "never-enqueued", "--missing")
    assert unknown.code == 2 and "never-enqueued" in unknown.stderr and "not found" in unknown.stderr

    enqueue_run(settings, tmp_path, "delta", images=1)
    both = producer(settings, "requeue", "--run", "delta", "--failed", "--missing")
    neither = producer(settings, "requeue", "--run", "delta")
    assert both.code == neither.code == 2
    assert "exactly one of --failed or --missing" in both.stderr
