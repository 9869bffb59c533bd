"""One answer to "is this batch done?" (`RunStore.run_state`), and reading a run from listings.

A batch is done once its results are written, poisoned when it has a poison report instead,
else pending; every command asks the same function, so they agree even when a consumer died
between its ack and its timing record. Both backends; the end-to-end test scores a real run
with a real consumer process and really deletes a timing record.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestration.pool import pending_runs
from tests.conftest import backend_env
from tests.support.cli import ROOT, run_cli
from tests.support.faults_pool import enqueue_run, staged_images
from workpool.runs import BatchRecord, Manifest, PoisonReport, ResultCounts, ResultRow, RunStore, batch_state
from workpool.settings import Settings
from workpool.storage import ObjectStore, open_result_store

SLEEP_TASK = "consumer.tasks.examples:SleepTask"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class CountingStore(ObjectStore):
    """The real store, counting the objects read (to show what a state costs)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.location = inner.location
        self.reads: list[str] = []

    def check(self) -> None:
        self.inner.check()

    def ensure(self) -> None:
        self.inner.ensure()

    def list(self, prefix: str = ""):  # type: ignore[no-untyped-def]
        return self.inner.list(prefix)

    def list_info(self, prefix: str = ""):  # type: ignore[no-untyped-def]
        return self.inner.list_info(prefix)

    def list_folders(self, prefix: str):  # type: ignore[no-untyped-def]
        return self.inner.list_folders(prefix)

    def read(self, name: str) -> bytes:
        self.reads.append(name)
        return self.inner.read(name)

    def write(self, name, data, metadata=None):  # type: ignore[no-untyped-def]
        self.inner.write(name, data, metadata)

    def create(self, name: str, data: bytes) -> None:
        self.inner.create(name, data)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def delete(self, name: str) -> None:
        self.inner.delete(name)


@pytest.fixture
def store(settings: Settings) -> CountingStore:
    inner = open_result_store(settings)
    inner.ensure()
    return CountingStore(inner)


def manifest_of(run_id: str, batches: int, per_batch: int = 2) -> Manifest:
    return Manifest(
        run_id=run_id,
        source="/images",
        task="classification",
        batch_size=per_batch,
        queue="q",
        images=batches * per_batch,
        batches={f"b{i}": [f"img{i}_{j}.jpg" for j in range(per_batch)] for i in range(batches)},
    )


def rows(manifest: Manifest, batch_id: str, worker: str = "w1", failed: int = 0) -> list[ResultRow]:
    return [
        ResultRow(
            image=name,
            status="error" if i < failed else "ok",
            error="cannot decode image" if i < failed else None,
            predictions=None if i < failed else [{"label": "cat", "index": 1, "score": 0.9}],
            batch_id=batch_id,
            worker=worker,
        )
        for i, name in enumerate(manifest.batches[batch_id])
    ]


def record(manifest: Manifest, batch_id: str, worker: str = "w1", at_s: float = 0.0) -> BatchRecord:
    images = len(manifest.batches[batch_id])
    return BatchRecord(
        run_id=manifest.run_id, batch_id=batch_id, worker=worker, attempt=1, images=images, images_ok=images,
        images_failed=0, dequeued_at=T0 + timedelta(seconds=at_s), scored_at=T0 + timedelta(seconds=at_s + 0.5),
        acked_at=T0 + timedelta(seconds=at_s + 1), images_per_s=float(images), started_at=T0, prepare_s=0.25,
    )  # fmt: skip


def test_the_one_rule_results_win_then_poison_then_pending() -> None:
    assert batch_state(has_results=True, poisoned=True) == "done"
    assert batch_state(has_results=True, poisoned=False) == "done"
    assert batch_state(has_results=False, poisoned=True) == "poisoned"
    assert batch_state(has_results=False, poisoned=False) == "pending"


def test_run_state_from_listings_reads_no_batch_object(store: CountingStore) -> None:
    # Given a run with batches done (one without its timing record), poisoned, scored after a
    # poisoning, and pending
    runs = RunStore(store)
    manifest = manifest_of("r", batches=5)
    runs.write_manifest(manifest)
    runs.write_results("r", "b0", rows(manifest, "b0", "w1", failed=1))
    runs.write_batch_record(record(manifest, "b0", "w1"))
    runs.write_results("r", "b1", rows(manifest, "b1", "w2"))  # died between its ack and its record
    runs.write_poison(PoisonReport(run_id="r", batch_id="b2", reason="model missing", attempts=5))
    runs.write_poison(PoisonReport(run_id="r", batch_id="b3", reason="lease lost", attempts=5))
    runs.write_results("r", "b3", rows(manifest, "b3", "w1"))  # scored after all: done
    store.reads.clear()

    # When its state is read
    state = runs.run_state("r", manifest)

    # Then each batch has its one state, with counts and timing from the listings' metadata
    assert {b: s.state for b, s in state.batches.items()} == {
        "b0": "done", "b1": "done", "b2": "poisoned", "b3": "done", "b4": "pending",
    }  # fmt: skip
    assert state.batches["b0"].counts == ResultCounts(2, 1, 1, "w1")
    assert state.batches["b0"].record is not None and state.batches["b0"].record.acked_at == T0 + timedelta(seconds=1)
    assert state.batches["b1"].counts == ResultCounts(2, 2, 0, "w2") and state.batches["b1"].record is None
    assert state.batches["b2"].poison is not None and state.batches["b2"].poison.reason == "model missing"
    assert state.pending == ["b4"] and not state.complete
    # and no object was read at all: no result, no timing record, no poison report
    assert store.reads == []
    # (the record from the metadata is the record in the object, extra fields included)
    assert state.batches["b0"].record == runs.read_batch_record("r", "b0")


def test_objects_written_without_metadata_are_read_once(store: CountingStore) -> None:
    # Given results and a record written as an older version did (no metadata)
    runs = RunStore(store)
    manifest = manifest_of("old", batches=2)
    runs.write_manifest(manifest)
    old_record = record(manifest, "b0", "w9")
    store.inner.write("runs/old/batches/b0.json", old_record.model_dump_json().encode())
    text = "".join(r.model_dump_json() + "\n" for r in rows(manifest, "b1", "w9", failed=2))
    store.inner.write("runs/old/results/b1.jsonl", text.encode())
    store.inner.write("runs/old/results/b0.jsonl", text.replace("b1", "b0").encode())

    # When the state is read, and read again given the first
    first = runs.run_state("old", manifest)
    reads_first = list(store.reads)
    store.reads.clear()
    again = runs.run_state("old", manifest, previous=first)

    # Then the record and the counts are read from the objects once, and not the second time
    assert first.batches["b0"].record == BatchRecord.model_validate_json(old_record.model_dump_json())
    assert first.batches["b0"].counts == ResultCounts(2, 2, 0, "w9")  # from its record
    assert first.batches["b1"].counts == ResultCounts(2, 0, 2, "w9")  # from its result rows
    assert sorted(reads_first) == ["runs/old/batches/b0.json", "runs/old/results/b1.jsonl"]
    assert again == first and store.reads == []


def test_requeue_missing_skips_done_batches_without_a_record_and_resends_the_rest(
    store: CountingStore, settings: Settings
) -> None:
    from producer.requeue import requeue_missing
    from tests.support.producer_cli import drain_messages

    runs = RunStore(store)
    manifest = manifest_of("rq", batches=3).model_copy(update={"queue": settings.queue})
    runs.write_manifest(manifest)
    runs.write_results("rq", "b0", rows(manifest, "b0"))  # done, no record
    runs.write_poison(PoisonReport(run_id="rq", batch_id="b1", reason="x", attempts=5))

    summary = requeue_missing(settings, "rq", progress_bar=False)

    assert (summary.batch_ids, summary.with_results) == (["b1", "b2"], 1)
    assert sorted(m.batch_id for m in drain_messages(settings)) == ["b1", "b2"]


def consume_until_idle(settings: Settings, tmp_path: Path) -> None:
    env = backend_env(settings)
    env["WORKPOOL_EXAMPLE_SLEEP_S"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", "consumer", "run", "--worker-id", "node-1", "--idle-exit-s", "2"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_deleted_timing_record_leaves_its_batch_done_for_every_command(settings: Settings, tmp_path: Path) -> None:
    # Given a run of 4 batches scored to the end by a real consumer
    source, _ = staged_images(settings, tmp_path / "images", 8)
    enqueue_run(settings, source, "lost", "--task", SLEEP_TASK, "--batch-size", "2")
    consume_until_idle(settings, tmp_path)
    store = open_result_store(settings)
    runs = RunStore(store)
    assert len(runs.record_batch_ids("lost")) == 4

    # When one timing record is really deleted: a consumer died between its ack and its record
    store.delete("runs/lost/batches/b000001.json")
    assert not store.exists("runs/lost/batches/b000001.json")
    assert len(runs.record_batch_ids("lost")) == 3

    # Then every command counts that batch as done
    status = run_cli("orchestration", settings, "status", "--run", "lost", "--json")
    assert status.code == 0, status.stderr
    [progress] = status.json()["runs"]
    assert (progress["batches_done"], progress["batches"], progress["complete"]) == (4, 4, True)
    assert (progress["images_ok"], progress["images_failed"]) == (8, 0)

    wait = run_cli("orchestration", settings, "wait", "--run", "lost", "--json", timeout_s=120)
    assert wait.code == 0, wait.stderr
    report = wait.json()
    assert (report["batches_done"], report["batches"], report["missing_batches"]) == (4, 4, [])
    assert report["images_ok"] == 8 and sum(report["workers"].values()) == 8  # credited from its results

    out = tmp_path / "lost.jsonl"
    results = run_cli("orchestration", settings, "results", "--run", "lost", "--out", str(out), "--json")
    assert results.code == 0, results.stderr
    assert (results.json()["ok"], results.json()["pending"]) == (8, 0)
    assert "not finished" not in results.stderr

    requeue = run_cli("producer", settings, "requeue", "--run", "lost", "--missing", "--json")
    assert requeue.code == 0, requeue.stderr
    assert (requeue.json()["requeued"], requeue.json()["with_results"]) == (0, 4)

    assert "lost" not in pending_runs(settings, runs)  # what `launch --wait` waits for


def test_a_poison_report_too_long_for_metadata_is_read_from_its_object(store: CountingStore) -> None:
    runs = RunStore(store)
    manifest = manifest_of("long", batches=2)
    runs.write_manifest(manifest)
    long_reason = "Traceback … ünïcode " + "x" * 9000  # past the 8 KiB metadata limit
    runs.write_poison(PoisonReport(run_id="long", batch_id="b0", reason=long_reason, attempts=5))
    runs.write_poison(PoisonReport(run_id="long", batch_id="b1", reason="short, ünïcode", attempts=5))
    store.reads.clear()

    reports = {r.batch_id: r.reason for r in runs.read_poison("long")}

    assert reports == {"b0": long_reason, "b1": "short, ünïcode"}
    assert store.reads == ["runs/long/poison/b0.json"]
