"""The GPU sampler (consumer/gpu_stats.py) on the fake NVML of tests/support/fake_nvml/.

The fake answers as NVML does (the module's functions, its error class); which GPUs are
sampled follows CUDA_VISIBLE_DEVICES; each batch's window starts where the previous one ended;
no NVML, no GPU or a broken driver means no sampler at all (absent, never 0 %).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest

from consumer.gpu_stats import GpuSampler
from orchestration.reports.progress import gpu_busy_by_worker
from tests.support.cli import ROOT
from workpool.runs import BatchRecord

FAKE = str(ROOT / "tests" / "support" / "fake_nvml")


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(FAKE)
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    module = importlib.import_module("pynvml")
    assert module.__file__ is not None and module.__file__.startswith(FAKE)
    yield module
    sys.modules.pop("pynvml", None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_share_covers_the_time_since_the_previous_one(
    fake_nvml: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_nvml.nvmlInit()
    clock = Clock()
    sampler = GpuSampler(fake_nvml, [0], clock=clock)
    monkeypatch.setenv("FAKE_NVML_BUSY", "20")
    clock.now = 101.0
    sampler.sample()
    monkeypatch.setenv("FAKE_NVML_BUSY", "60")
    clock.now = 102.0
    sampler.sample()
    clock.now = 102.5
    first = sampler.share()
    assert first is not None and first.busy_pct == 40.0 and first.window_s == 2.5 and first.memory_mb == 5120.0
    monkeypatch.setenv("FAKE_NVML_BUSY", "90")
    clock.now = 103.0
    sampler.sample()
    second = sampler.share()
    assert second is not None and second.busy_pct == 90.0 and second.window_s == 0.5
    clock.now = 103.1  # no sample in a window shorter than the interval: the latest stands in
    third = sampler.share()
    assert third is not None and third.busy_pct == 90.0


def test_the_visible_gpus_are_sampled_and_averaged(fake_nvml: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NVML_GPUS", "4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    sampler = GpuSampler.start(interval_s=0.05)
    assert sampler is not None
    try:
        assert sampler.gpus == 2
        share = sampler.share()
        assert share is not None and share.busy_pct == 73.0 and share.memory_mb == 2 * 5120.0
    finally:
        sampler.stop()


@pytest.mark.parametrize("gpus", ["0", "broken"])
def test_no_gpu_or_a_failing_driver_means_no_sampler(
    fake_nvml: ModuleType, monkeypatch: pytest.MonkeyPatch, gpus: str
) -> None:
    if gpus == "broken":

        def fail() -> None:
            raise fake_nvml.NVMLError("Driver Not Loaded")

        monkeypatch.setattr(fake_nvml, "nvmlInit", fail)
    else:
        monkeypatch.setenv("FAKE_NVML_GPUS", gpus)
    assert GpuSampler.start() is None


def test_without_nvml_there_is_no_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # importing it raises ImportError
    assert GpuSampler.start() is None


def record(worker: str, busy: float | None, window_s: float | None, acked_s: float) -> BatchRecord:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    at = t0 + timedelta(seconds=acked_s)
    return BatchRecord(
        run_id="r", batch_id=f"b{acked_s}", worker=worker, attempt=1, images=4, images_ok=4, images_failed=0,
        dequeued_at=at, scored_at=at, acked_at=at, images_per_s=1.0, gpu_busy_pct=busy, gpu_window_s=window_s,
    )  # fmt: skip


def test_busy_per_worker_is_weighted_by_window_and_absent_without_a_gpu() -> None:
    records = [
        record("gpu-node", 100.0, 1.0, 10),
        record("gpu-node", 0.0, 3.0, 20),
        record("cpu-node", None, None, 20),
        record("old-node", 50.0, 1.0, 1),
    ]
    assert gpu_busy_by_worker(records) == {"gpu-node": 25.0, "old-node": 50.0}
    since = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=5)
    assert gpu_busy_by_worker(records, since=since) == {"gpu-node": 25.0}
