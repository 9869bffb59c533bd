"""The benchmarks import, and their arithmetic is right on tiny inputs (no timing asserted here)."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime, timedelta

import pytest

from bench.common import efficiency, ratio_line
from bench.projection import OLD_RECIPE_MIN, Projection, old_recipe_images_per_s, storage_images_per_s
from bench.scaling import EMBEDDED, ScalingPlan, fixed_loss_s
from bench.stragglers import ideal_time, node_speeds, static_shard_time
from workpool.runs import BatchRecord

BENCH_MODULES = ["bench.common", "bench.pipeline", "bench.scaling", "bench.stragglers", "bench.enqueue_rate"]
BENCH_MODULES += ["bench.memory", "bench.projection", "bench.__main__"]


@pytest.mark.parametrize("module", BENCH_MODULES)
def test_every_bench_module_imports(module: str) -> None:
    assert importlib.import_module(module) is not None


def test_scaling_efficiency_is_t1_over_n_tn() -> None:
    assert efficiency(100.0, 1, 100.0) == 1.0
    assert efficiency(100.0, 4, 25.0) == 1.0
    assert efficiency(100.0, 4, 50.0) == 0.5
    assert efficiency(160.0, 16, 10.5) == pytest.approx(160 / 168)
    assert efficiency(100.0, 4, 0.0) == 0.0  # nothing measured: no division by zero


def test_fixed_loss_is_what_n_nodes_lose_against_a_perfect_split() -> None:
    assert fixed_loss_s(160.0, 16, 10.5) == pytest.approx(0.5)
    assert fixed_loss_s(160.0, 16, 9.0) == 0.0  # faster than linear counts as no loss


def test_the_scaling_plan_gives_every_node_whole_batches_at_the_largest_tier() -> None:
    plan = ScalingPlan(tiers=(1, 2, 4), batch_size=8, batches_per_node=5, sleep_s=0.01)
    assert plan.images == 4 * 5 * 8
    assert plan.ideal_t1_s() == pytest.approx(1.6)
    assert EMBEDDED.tiers == (1, 2, 4, 8, 16)
    assert EMBEDDED.images % (16 * EMBEDDED.batch_size) == 0


def test_straggler_ideal_and_static_shards() -> None:
    # Seven nodes at 40 images/s and one at 10: 290 images/s in all
    speeds = [40.0] * 7 + [10.0]
    assert ideal_time(2900, speeds) == pytest.approx(10.0)
    # Equal slices of 2,900 (363 for the first four, 362 for the rest): the slow node has 363
    assert static_shard_time(2900, speeds) == pytest.approx(363 / 10)
    # Equal speeds: static shards are ideal when the work divides
    assert static_shard_time(800, [10.0] * 8) == ideal_time(800, [10.0] * 8) == 10.0


def record(worker: str, start_s: float, busy_s: float, images: int) -> BatchRecord:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return BatchRecord.model_validate(
        {
            "run_id": "r",
            "batch_id": f"{worker}-{start_s}",
            "worker": worker,
            "attempt": 1,
            "images": images,
            "images_ok": images,
            "images_failed": 0,
            "dequeued_at": t0 + timedelta(seconds=start_s - 0.5),
            "started_at": (t0 + timedelta(seconds=start_s)).isoformat(),
            "scored_at": t0 + timedelta(seconds=start_s + busy_s),
            "acked_at": t0 + timedelta(seconds=start_s + busy_s),
            "images_per_s": images / busy_s,
        }
    )


def test_node_speed_is_images_over_busy_time_from_the_records() -> None:
    records = [record("a", 0, 1.0, 8), record("a", 2, 1.0, 8), record("b", 0, 4.0, 8)]
    speeds, images = node_speeds(records)
    assert speeds == {"a": pytest.approx(8.0), "b": pytest.approx(2.0)}
    assert images == {"a": 16, "b": 8}


def test_projection_divides_the_work_and_adds_the_fixed_loss_beyond_one_node() -> None:
    p = Projection(node_images_per_s=400.0, pipeline_efficiency=0.8, fixed_loss_s=6.0)
    # 100,000 images at 320 images/s = 312.5 s on one node, no pool loss
    assert p.minutes(1) == pytest.approx(312.5 / 60)
    # 32 nodes: 312.5 / 32 s of work plus the fixed loss
    assert p.minutes(32) == pytest.approx((312.5 / 32 + 6.0) / 60)
    assert p.minutes(4, images=1_600) == pytest.approx((1_600 / 1_280 + 6.0) / 60)


def test_projection_takes_the_slowest_of_model_process_decode_and_storage() -> None:
    # One account: 20,000 requests/s, each image one GET plus 4 requests per batch of 64
    assert storage_images_per_s(1) == pytest.approx(20_000 / (1 + 4 / 64))
    assert storage_images_per_s(3, batch_size=32) == pytest.approx(3 * 20_000 / (1 + 4 / 32))
    # An A100 node (2,400 model images/s) whose one consumer process carries 1,000 images/s
    p = Projection(2_400.0, 1.0, 0.0, process_images_per_s=1_000.0, node_decode_images_per_s=24 * 150.0)
    assert (p.node_rate, p.limit(1)) == (1_000.0, "process")
    # Decode on 6 cores at 150/s bounds a node before a 1,000/s process does
    q = Projection(2_400.0, 1.0, 0.0, process_images_per_s=1_000.0, node_decode_images_per_s=6 * 150.0)
    assert (q.node_rate, q.limit(1)) == (900.0, "decode")
    # 32 such nodes want 28,800 images/s: one account's ~18,800 bounds the pool
    r = Projection(2_400.0, 1.0, 0.0, 1_000.0, 6 * 150.0, storage_images_per_s(1))
    assert r.limit(32) == "storage"
    assert r.minutes(32, images=366_111) == pytest.approx(366_111 / storage_images_per_s(1) / 60)


def test_the_old_recipe_table_and_its_node_rate() -> None:
    assert OLD_RECIPE_MIN["P100"] == {1: 255, 8: 32, 16: 19, 32: 10}
    assert OLD_RECIPE_MIN["K80"] == {1: 741, 8: 99, 16: 49, 32: 25}
    assert old_recipe_images_per_s("P100") == pytest.approx(100_000 / (255 * 60))


def test_ratio_lines_name_the_ratio_and_its_goal() -> None:
    assert ratio_line("x", 0.96123, "≥ 0.95") == "RATIO x = 0.961  (goal ≥ 0.95)"
    assert ratio_line("y", 2) == "RATIO y = 2.000"
