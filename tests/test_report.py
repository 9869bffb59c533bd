"""`orchestration report`: cost figures from the pool's event log, and the timeline PNG.

The run here is written through the same store APIs the producer and the consumers use (a
manifest, results and timing records, pool events), with times chosen so every figure can be
worked out by hand; the real end-to-end run is in tests/test_report_cli.py.
"""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestration.reports.report import build_report, preempted_vms
from orchestration.reports.timeline_plot import plot_timeline
from tests.support.orchestration_cli import orchestration
from workpool.pool_events import PoolEvent, record_pool_event
from workpool.runs import BatchRecord, Manifest, PoisonReport, ResultRow, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def write_run(settings: Settings, *, with_events: bool = True, poisoned: bool = False) -> RunStore:
    """Run r1: 6 batches of 10 images, enqueued at 0 s.

    Pool: launch 2 nodes at 5 s, scale to 3 at 20 s, one preempted at 30 s, teardown at 70 s.
    Batches acked at 15, 25, 35, 45, 55 and 60 s: the last ack, hence the window's end, at 60 s.
    Node-seconds over [0, 60]: 2 × 15 + 3 × 40 = 150; the idle tail 60 → 70 s at 3 nodes = 30.
    """
    runs = RunStore(open_result_store(settings))
    runs.store.ensure()  # as `producer enqueue` does
    batches = {f"b{i}": [f"img{i}-{j}.jpg" for j in range(10)] for i in range(6)}
    runs.create_manifest(
        Manifest(
            run_id="r1",
            created_at=T0,
            source="/x",
            task="classification",
            batch_size=10,
            queue=settings.queue,
            images=60,
            batches=batches,
        )
    )
    acks = [15, 25, 35, 45, 55, 60]
    workers = ["node-1", "node-2", "node-1", "node-3", "node-2", "node-1"]
    for i, (batch_id, images) in enumerate(batches.items()):
        if poisoned and i == 5:
            runs.write_poison(PoisonReport(run_id="r1", batch_id=batch_id, reason="bad", attempts=1))
            continue
        worker, ack = workers[i], acks[i]
        rows = [ResultRow(image=n, status="ok", predictions=[], batch_id=batch_id, worker=worker) for n in images]
        runs.write_results("r1", batch_id, rows)
        runs.write_batch_record(
            BatchRecord(
                run_id="r1",
                batch_id=batch_id,
                worker=worker,
                attempt=2 if i == 3 else 1,
                images=10,
                images_ok=10,
                images_failed=0,
                dequeued_at=at(ack - 8),
                scored_at=at(ack - 1),
                acked_at=at(ack),
                images_per_s=10 / 8,
                started_at=at(ack - 6),
                prepare_s=0.5,
                score_s=5.0,
            )
        )
    if with_events:
        q = settings.queue
        for event in (
            PoolEvent(kind="launch", queue=q, at=at(-100), backend="local", nodes_before=0, nodes_after=4),
            PoolEvent(kind="teardown", queue=q, at=at(-50), backend="local", nodes_before=4, nodes_after=0),
            PoolEvent(kind="launch", queue=q, at=at(5), backend="local", nodes_before=0, nodes_after=2),
            PoolEvent(kind="scale", queue=q, at=at(20), backend="local", nodes_before=2, nodes_after=3),
            PoolEvent(kind="preempt", queue=q, at=at(30), backend="local", node="node-3"),
            PoolEvent(kind="teardown", queue=q, at=at(70), backend="local", nodes_before=3, nodes_after=0),
        ):
            assert record_pool_event(settings, event)
    return runs


def test_cost_figures_come_from_the_pool_events_over_the_run(settings: Settings) -> None:
    runs = write_run(settings)
    report = build_report(runs, "r1", price_per_node_hour=3.6)
    cost = report.cost
    assert cost.node_seconds_source == "pool events"
    assert cost.node_seconds == pytest.approx(150.0)  # 2 × 15 s + 3 × 40 s; the earlier pool is not this run's
    assert cost.tail_node_seconds == pytest.approx(30.0)  # 3 nodes from the last ack (60 s) to the teardown (70 s)
    assert cost.nodes_peak == 3
    assert cost.preemptions == 1
    assert cost.cost == pytest.approx(150 * 3.6 / 3600)  # 0.15
    assert cost.cost_per_1000_images == pytest.approx(0.15 * 1000 / 60)
    assert cost.images_per_s_per_node == pytest.approx(60 / 150)
    assert cost.time_to_first_result_s == pytest.approx(15.0)
    assert cost.time_to_first_dequeue_s == pytest.approx(7.0)
    data = report.to_json()
    assert data["run_id"] == "r1" and data["drain_wall_s"] == pytest.approx(53.0)  # first dequeue 7 s → last ack 60 s
    assert (data["node_seconds"], data["cost"], data["cost_per_1000_images"]) == (150.0, 0.15, 2.5)
    assert data["price_per_node_hour"] == 3.6 and data["enqueued_at"] == T0.isoformat()


def test_without_a_price_there_is_no_cost_and_without_events_worker_spans_stand_in(settings: Settings) -> None:
    runs = write_run(settings, with_events=False)
    report = build_report(runs, "r1")
    cost = report.cost
    assert (cost.cost, cost.cost_per_1000_images) == (None, None)
    assert cost.node_seconds_source == "worker spans"
    # node-1: 7 → 60 s, node-2: 17 → 55 s, node-3: 37 → 45 s
    assert cost.node_seconds == pytest.approx(53 + 38 + 8)
    assert cost.tail_node_seconds is None and cost.nodes_peak == 3
    assert "no price (WORKPOOL_PRICE_PER_NODE_HOUR" in report.render()


def test_a_poisoned_batch_ends_the_backlog_and_counts_no_images(settings: Settings, tmp_path: Path) -> None:
    runs = write_run(settings, poisoned=True)
    report = build_report(runs, "r1", price_per_node_hour=1.0)
    assert report.cost.images_scored == 50 and len(report.poisoned) == 1
    assert report.drain.batches_poisoned == 1
    png = plot_timeline(report, tmp_path / "poisoned.png")
    assert png_size(png)[0] > 0


def test_the_timeline_is_a_png_of_sane_size(settings: Settings, tmp_path: Path) -> None:
    runs = write_run(settings)
    path = plot_timeline(build_report(runs, "r1", price_per_node_hour=3.6), tmp_path / "deep" / "timeline.png")
    width, height = png_size(path)
    assert 800 <= width <= 2000 and 400 <= height <= 2000
    assert path.stat().st_size > 10_000  # a drawn picture, not an empty canvas


def test_report_command_prints_json_and_writes_the_plot(settings: Settings, tmp_path: Path) -> None:
    write_run(settings)
    png = tmp_path / "r1.png"
    out = orchestration(settings, "report", "--run", "r1", "--json", "--plot", str(png), "--price-per-node-hour", "3.6")
    assert out.code == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["node_seconds"], data["cost"], data["nodes_peak"]) == (150.0, 0.15, 3)
    assert png_size(png)[0] > 0
    text = orchestration(settings, "report", "--run", "r1", env={"WORKPOOL_PRICE_PER_NODE_HOUR": "7.2"})
    assert text.code == 0, text.stderr
    assert "node-seconds     150.0" in text.stdout and "cost             0.3000 at 7.2 per node-hour" in text.stdout


def test_report_of_an_unknown_run_or_a_negative_price_is_a_usage_error(settings: Settings) -> None:
    write_run(settings)
    assert orchestration(settings, "report", "--run", "nope").code == 2
    assert orchestration(settings, "report", "--run", "r1", "--price-per-node-hour", "-1").code == 2


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (and proof that it is a PNG)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_wait_prints_the_cost_figures_beside_the_drain_report(settings: Settings) -> None:
    write_run(settings)
    out = orchestration(settings, "wait", "--run", "r1", "--json", env={"WORKPOOL_PRICE_PER_NODE_HOUR": "3.6"})
    assert out.code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["batches_done"] == 6 and data["missing_batches"] == []
    assert (data["node_seconds"], data["cost"], data["cost_per_1000_images"]) == (150.0, 0.15, 2.5)


def test_preemptions_count_vms_not_their_consumers() -> None:
    def notice(worker: str, event_id: str, vm: str, seconds: float) -> PoolEvent:
        return PoolEvent(
            kind="preempt", queue="q", at=at(seconds), node=worker, inputs={"event_id": event_id, "vm": vm}
        )

    events = [
        notice("vm7-0", "E1", "vm7", 10),  # two GPU workers of one VM, one notice
        notice("vm7-1", "E1", "vm7", 10.2),
        notice("vm9-0", "E2", "vm9", 12),
        notice("vm3-0", "E3", "vm3", 500),  # after the run
        PoolEvent(kind="preempt", queue="q", at=at(20), node="old-consumer"),  # recorded without the fields
    ]
    assert preempted_vms(events, at(0), at(100)) == 3
