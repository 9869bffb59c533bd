"""Drain reports, progress, results export and the benchmark table, from records in a real store.

Records are written through `RunStore` exactly as consumers write them, on both backends, with
timings chosen by the test, so the arithmetic (wall time, rates, speedups) can be checked exactly.
"""

from __future__ import annotations

import csv
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestration.reports.drain import drain_report, wait_for_drain
from orchestration.reports.export import export_results, top_prediction
from orchestration.reports.plot import plot_benchmark
from orchestration.reports.progress import RunTracker, rate_over_window
from orchestration.tools.benchmark import (
    BenchmarkPlan,
    BenchmarkResult,
    TierResult,
    parse_tiers,
    render_table,
    score_speedups,
)
from workpool.errors import UsageError
from workpool.queue import open_queue
from workpool.runs import BatchRecord, Manifest, PoisonReport, ResultRow, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def runs(settings: Settings) -> RunStore:
    store = open_result_store(settings)
    store.ensure()
    return RunStore(store)


def make_run(runs: RunStore, run_id: str = "r", batches: int = 3, per_batch: int = 2) -> Manifest:
    manifest = Manifest(
        run_id=run_id,
        source="/images",
        task="classification",
        batch_size=per_batch,
        queue="q",
        images=batches * per_batch,
        batches={f"b{i}": [f"img{i}_{j}.jpg" for j in range(per_batch)] for i in range(batches)},
    )
    runs.write_manifest(manifest)
    return manifest


def score(
    runs: RunStore, manifest: Manifest, batch_id: str, worker: str, start: float, end: float, fail: int = 0
) -> None:
    """Write a batch's results and timing record the way a consumer does (results, ack, record)."""
    images = manifest.batches[batch_id]
    rows = [
        ResultRow(
            image=name,
            status="error" if i < fail else "ok",
            error="cannot decode image" if i < fail else None,
            predictions=None
            if i < fail
            else [{"label": "cat", "index": 1, "score": 0.75}, {"label": "dog", "index": 2, "score": 0.2}],
            batch_id=batch_id,
            worker=worker,
        )
        for i, name in enumerate(images)
    ]
    runs.write_results(manifest.run_id, batch_id, rows)
    runs.write_batch_record(
        BatchRecord(
            run_id=manifest.run_id,
            batch_id=batch_id,
            worker=worker,
            attempt=1,
            images=len(images),
            images_ok=len(images) - fail,
            images_failed=fail,
            dequeued_at=at(start),
            scored_at=at(end - 0.1),
            acked_at=at(end),
            images_per_s=len(images) / (end - start),
        )
    )


def test_drain_report_measures_first_dequeue_to_last_ack_and_credits_each_worker(runs: RunStore) -> None:
    manifest = make_run(runs, batches=3)
    score(runs, manifest, "b0", "w1", start=0.5, end=2.0)
    score(runs, manifest, "b1", "w2", start=1.0, end=3.0, fail=1)
    score(runs, manifest, "b2", "w1", start=2.0, end=4.5)

    report = drain_report(RunTracker(runs, "r"))

    assert report.drain_wall_s == pytest.approx(4.0)
    assert report.images_per_s == pytest.approx(6 / 4.0)
    assert report.workers == {"w1": 4, "w2": 2} and report.worker_batches == {"w1": 2, "w2": 1}
    assert (report.images_ok, report.images_failed) == (5, 1)
    assert report.failures == {"cannot decode image": 1}
    assert report.ok
    data = report.to_json()
    for key in (
        "run_id",
        "images",
        "images_ok",
        "images_failed",
        "batches",
        "batches_poisoned",
        "drain_wall_s",
        "images_per_s",
        "workers",
    ):
        assert key in data
    assert "4.0 s" in report.render() and "w2" in report.render()


def test_progress_counts_done_and_poisoned_batches_and_estimates_the_rest(runs: RunStore) -> None:
    manifest = make_run(runs, batches=4)
    score(runs, manifest, "b0", "w1", start=0.0, end=10.0)
    score(runs, manifest, "b1", "w1", start=10.0, end=20.0)
    runs.write_poison(PoisonReport(run_id="r", batch_id="b2", reason="model missing", attempts=5))

    progress = RunTracker(runs, "r").refresh(now=at(20.0))

    assert (progress.batches_done, progress.batches_poisoned, progress.batches) == (2, 1, 4)
    assert (progress.images_ok, progress.images_failed) == (4, 2)
    assert progress.images_per_s == pytest.approx(4 / 20.0)  # run younger than a minute
    assert progress.eta_s == pytest.approx(2 / 0.2)
    assert not progress.complete


def test_the_rate_looks_at_the_last_minute_only() -> None:
    def record(acked: float) -> BatchRecord:
        return BatchRecord(
            run_id="r", batch_id=f"b{acked}", worker="w", attempt=1, images=10, images_ok=10, images_failed=0,
            dequeued_at=at(acked - 5), scored_at=at(acked), acked_at=at(acked), images_per_s=2.0,
        )  # fmt: skip

    records = [record(t) for t in (30, 100, 130, 150)]
    assert rate_over_window(records, now=at(160)) == pytest.approx(30 / 60)
    assert rate_over_window([], now=at(160)) == 0.0


def test_export_has_one_row_per_manifest_image_in_order_whatever_happened(runs: RunStore, tmp_path: Path) -> None:
    manifest = make_run(runs, batches=3)
    score(runs, manifest, "b0", "w1", start=0, end=1, fail=1)
    score(runs, manifest, "b0", "w2", start=2, end=3)  # scored twice: the retry overwrote the first
    runs.write_poison(PoisonReport(run_id="r", batch_id="b1", reason="decoder crashed", attempts=5, worker="w2"))
    # b2: not scored yet

    summary = export_results(runs, "r", tmp_path / "out.csv")

    with (tmp_path / "out.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [name for images in manifest.batches.values() for name in images]
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error", "error", "error"]
    assert rows[0]["worker"] == "w2" and rows[0]["top_label"] == "cat" and float(rows[0]["top_score"]) == 0.75
    assert json.loads(rows[0]["predictions"])[1]["label"] == "dog"
    assert rows[2]["error"] == "poisoned after 5 attempts: decoder crashed"
    assert "not scored yet" in rows[4]["error"]
    assert (summary.rows, summary.ok, summary.failed, summary.pending) == (6, 2, 4, 2)


def test_jsonl_keeps_predictions_nested_and_parquet_stores_them_as_json_text(runs: RunStore, tmp_path: Path) -> None:
    manifest = make_run(runs, batches=1)
    score(runs, manifest, "b0", "w1", start=0, end=1)

    export_results(runs, "r", tmp_path / "out.jsonl")
    export_results(runs, "r", tmp_path / "out.parquet")

    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines[0]["predictions"][0] == {"label": "cat", "index": 1, "score": 0.75}
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["image"] for r in table] == manifest.batches["b0"]
    assert json.loads(table[0]["predictions"])[0]["label"] == "cat" and table[0]["top_score"] == 0.75


def test_export_refuses_unknown_formats_and_unknown_runs(runs: RunStore, tmp_path: Path) -> None:
    make_run(runs)
    with pytest.raises(UsageError, match=r"\.csv"):
        export_results(runs, "r", tmp_path / "out.xlsx")
    with pytest.raises(Exception, match="not found"):
        export_results(runs, "nope", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_top_prediction_reads_classification_and_multi_head_shapes() -> None:
    assert top_prediction([{"label": "a", "score": 0.1}, {"label": "b", "score": 0.9}]) == ("b", 0.9)
    heads = {"color": [{"label": "red", "score": 0.8}], "kind": [{"label": "shirt", "score": 0.6}]}
    assert top_prediction(heads) == ("color=red; kind=shirt", None)
    assert top_prediction("something else") == (None, None)


def test_wait_reports_batches_lost_once_the_queue_is_empty(settings: Settings, runs: RunStore) -> None:
    # A run whose last batch was never sent (or was purged): the queue is empty, the batch never comes.
    manifest = make_run(runs, batches=2)
    score(runs, manifest, "b0", "w1", start=0, end=1)
    queue = open_queue(settings)
    queue.create()

    report = wait_for_drain(runs, queue, "r", poll_s=0.05, settle_s=0.3)

    assert report.missing_batches == ["b1"] and not report.ok
    assert "producer requeue --run r --missing" in report.render()


def test_benchmark_table_and_plot_show_speedup_against_the_smallest_tier(tmp_path: Path) -> None:
    assert parse_tiers("4,1,2") == [1, 2, 4]
    for bad in ("", "0,1", "1,1", "a,b"):
        with pytest.raises(UsageError):
            parse_tiers(bad)
    tiers = [
        TierResult(nodes=n, run_id=f"b-n{n}", images=64, images_ok=64, batches=8, batches_poisoned=0,
                   drain_wall_s=wall, images_per_s=64 / wall, launch_to_drained_s=wall + 3,
                   workers={f"w{i}": 64 // n for i in range(n)}, complete=True)
        for n, wall in ((1, 40.0), (2, 20.0), (4, 16.0))
    ]  # fmt: skip
    score_speedups(tiers)
    assert [t.speedup for t in tiers] == pytest.approx([1.0, 2.0, 2.5])
    assert [t.efficiency for t in tiers] == pytest.approx([1.0, 1.0, 0.625])
    result = BenchmarkResult(
        BenchmarkPlan(
            tiers=[1, 2, 4], images=64, source="/x", task="classification", model="/m/inceptionv3-random.keras"
        ),
        "now",
        tiers,
    )

    table = render_table(result)
    assert "| 1 node | 2 nodes | 4 nodes |" in table.replace("  ", " ").replace("  ", " ")
    assert "2.50×" in table and "62%" in table and "inceptionv3-random.keras" in table

    png = plot_benchmark(result, tmp_path / "bench.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_status_shows_the_runs_still_going_else_the_latest(settings: Settings, runs: RunStore) -> None:
    from orchestration.reports.status import StatusReader

    queue = open_queue(settings)
    queue.create()
    old = make_run(runs, "old", batches=1).model_copy(update={"queue": settings.queue, "created_at": at(0)})
    runs.write_manifest(old)
    score(runs, old, "b0", "w1", start=0, end=1)
    reader = StatusReader(runs, queue, None, None)

    # With only a finished run, the latest run is shown
    assert [r.run_id for r in reader.snapshot().runs] == ["old"]

    # Once a new run is going, only it is shown, with its progress
    new = make_run(runs, "new", batches=2).model_copy(update={"queue": settings.queue, "created_at": at(60)})
    runs.write_manifest(new)
    score(runs, new, "b0", "w2", start=60, end=61)
    queue.send(["one message of the new run"])
    snap = reader.snapshot().to_json()
    assert [r["run_id"] for r in snap["runs"]] == ["new"]
    assert snap["runs"][0]["batches_done"] == 1 and not snap["runs"][0]["complete"]
    queue_fields = {key: snap["queue"][key] for key in ("name", "messages", "poison")}  # status adds more
    assert queue_fields == {"name": settings.queue, "messages": 1, "poison": 0}
    assert snap["cluster"] is None


@pytest.mark.integration  # the export starts its worker processes in the product code
def test_export_from_worker_processes_equals_the_export_from_threads(
    runs: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestration.reports.export as export

    # Given a run with scored, partly failed, poisoned and unscored batches
    manifest = make_run(runs, batches=9, per_batch=3)
    for i in range(6):
        score(runs, manifest, f"b{i}", f"w{i % 2}", start=i, end=i + 1, fail=i % 3)
    runs.write_poison(PoisonReport(run_id="r", batch_id="b6", reason="decoder crashed", attempts=5))

    # When it is exported by threads in this process, and by forked worker processes
    monkeypatch.setattr(export, "PROCESS_MIN_BATCHES", 10**9)
    by_threads = {suffix: export_results(runs, "r", tmp_path / f"threads{suffix}") for suffix in (".csv", ".jsonl")}
    monkeypatch.setattr(export, "PROCESS_MIN_BATCHES", 1)
    monkeypatch.setattr(export, "CHUNK_BATCHES", 2)
    monkeypatch.setattr(export.os, "cpu_count", lambda: 4)  # a worker pool even on a 1-core machine
    pools = []
    in_processes = export._scored_in_processes
    monkeypatch.setattr(
        export, "_scored_in_processes", lambda *args: pools.append(args[-1]) or in_processes(*args)
    )  # the real pool, counted
    by_processes = {suffix: export_results(runs, "r", tmp_path / f"procs{suffix}") for suffix in (".csv", ".jsonl")}
    assert len(pools) == 2 and all(processes > 1 for processes in pools)

    # Then the files are the same, byte for byte
    for suffix in (".csv", ".jsonl"):
        assert (tmp_path / f"procs{suffix}").read_bytes() == (tmp_path / f"threads{suffix}").read_bytes()
        assert (by_processes[suffix].rows, by_processes[suffix].pending) == (27, 6)
        assert by_threads[suffix].ok == by_processes[suffix].ok == 12


def test_wait_gives_the_last_timing_records_a_moment_then_counts_a_batch_without_one_as_done(
    settings: Settings, runs: RunStore
) -> None:
    import threading

    # Given a run whose batches all have results, the last one's record still to come
    manifest = make_run(runs, batches=3)
    score(runs, manifest, "b0", "w1", start=0, end=1)
    score(runs, manifest, "b1", "w1", start=1, end=2)
    rows = [ResultRow(image=image, status="ok", batch_id="b2", worker="w2") for image in manifest.batches["b2"]]
    runs.write_results("r", "b2", rows)
    queue = open_queue(settings)
    queue.create()

    # When its record is written half a second into `wait`
    def record_b2() -> None:
        time.sleep(0.5)
        runs.write_batch_record(
            BatchRecord(run_id="r", batch_id="b2", worker="w2", attempt=1, images=2, images_ok=2, images_failed=0,
                        dequeued_at=at(2), scored_at=at(2.5), acked_at=at(3), images_per_s=2.0)
        )  # fmt: skip

    writer = threading.Thread(target=record_b2)
    writer.start()
    report = wait_for_drain(runs, queue, "r", poll_s=0.05, settle_s=30)
    writer.join()

    # Then the report has it: the drain runs to its ack
    assert report.ok and report.batches_done == 3 and report.drain_wall_s == pytest.approx(3.0)
    assert report.worker_batches == {"w1": 2, "w2": 1}

    # And once a record never comes (its consumer died after the ack), the batch is done all the same
    runs.store.delete("runs/r/batches/b2.json")
    started = time.monotonic()
    report = wait_for_drain(runs, queue, "r", poll_s=0.05, settle_s=30)
    assert time.monotonic() - started < 20  # the record grace, not the 30 s settle time
    assert report.ok and report.batches_done == 3 and report.drain_wall_s == pytest.approx(2.0)
    assert report.workers == {"w1": 4, "w2": 2}  # credited from its results


def test_status_before_anything_was_enqueued_says_the_queue_is_not_there_yet(settings: Settings) -> None:
    from tests.support.cli import run_cli

    # Given a fresh account (or home) where nothing was ever enqueued and no consumer ran
    # When a user asks for the status
    out = run_cli("orchestration", settings, "status", "--json")
    # Then it answers (no error): an empty queue still to be created, no runs
    assert out.code == 0, out.stderr
    status = out.json()
    assert status["queue"]["messages"] == 0
    assert status["runs"] == []
    if settings.uses_azure_storage:
        assert status["queue"]["exists"] is False
    text = run_cli("orchestration", settings, "status")
    assert text.code == 0, text.stderr
