"""How busy this consumer's GPUs are: NVML sampled while the consumer runs.

A background thread reads each visible GPU's utilization (the share of the last sample period
in which a kernel ran) and memory in use a few times a second. The worker asks, as each batch
is scored, for the GPUs' share since the previous batch was scored (`GpuSampler.share`): the
windows follow one another, so a worker starved of input shows a low share, not only a busy
kernel. That share is kept in the batch's timing record (`gpu_busy_pct`, `gpu_memory_mb`,
`gpu_window_s`); `status`, `report` and the dashboard average it per worker.

Without NVML (no `pynvml` module, no driver, no GPU) there is no sampler and the record has no
GPU fields: absent, never zero. `pynvml` is the module of the `nvidia-ml-py` package; tests put
a fake one first on PYTHONPATH (tests/support/fake_nvml/).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 0.2
# Samples kept: a window longer than this (a batch scored after minutes of waiting) uses the newest.
MAX_SAMPLES = 3000


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    busy_pct: float  # mean over the visible GPUs
    memory_mb: float  # summed over the visible GPUs


@dataclass(frozen=True)
class GpuShare:
    """The GPUs' mean utilization and peak memory over one window."""

    busy_pct: float
    memory_mb: float
    window_s: float


def _visible_indices(count: int) -> list[int]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when it lists indices, else all."""
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return list(range(count))
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    if not all(part.isdigit() for part in wanted):
        return list(range(count))  # UUIDs or MIG names: sample every GPU rather than guess
    return [int(part) for part in wanted if int(part) < count]


class GpuSampler:
    """Samples the visible GPUs on a daemon thread until `stop`."""

    def __init__(
        self,
        nvml: Any,
        handles: list[Any],
        interval_s: float = SAMPLE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml = nvml
        self._handles = handles
        self._interval_s = interval_s
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=MAX_SAMPLES)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._since = clock()
        self._thread = threading.Thread(target=self._loop, name="gpu-stats", daemon=True)

    @property
    def gpus(self) -> int:
        return len(self._handles)

    @classmethod
    def start(cls, interval_s: float = SAMPLE_INTERVAL_S) -> GpuSampler | None:
        """A running sampler of this process's GPUs, or None without NVML or GPU."""
        nvml = _load_nvml()
        if nvml is None:
            return None
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in _visible_indices(count)]
        except Exception as exc:  # NVMLError: no driver, no device, a broken install
            log.debug("no GPU statistics: %s", exc)
            return None
        if not handles:
            return None
        sampler = cls(nvml, handles, interval_s)
        sampler.sample()
        sampler._thread.start()
        log.info("sampling %d GPU(s) every %.1f s", len(handles), interval_s)
        return sampler

    def sample(self) -> Sample | None:
        try:
            busy = [float(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in self._handles]
            used = [float(self._nvml.nvmlDeviceGetMemoryInfo(h).used) for h in self._handles]
        except Exception as exc:  # a GPU fallen off the bus: no sample, the window goes on
            log.debug("GPU sample failed: %s", exc)
            return None
        sample = Sample(self._clock(), sum(busy) / len(busy), sum(used) / 2**20)
        with self._lock:
            self._samples.append(sample)
        return sample

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def share(self) -> GpuShare | None:
        """The GPUs' share since the previous call (or the start); None when no sample fell in it."""
        now = self._clock()
        with self._lock:
            since, self._since = self._since, now
            window = [s for s in self._samples if since <= s.at <= now]
            if not window and self._samples:
                window = [self._samples[-1]]  # a window shorter than the sample interval
        if not window:
            return None
        busy = sum(s.busy_pct for s in window) / len(window)
        return GpuShare(busy_pct=busy, memory_mb=max(s.memory_mb for s in window), window_s=now - since)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self._interval_s + 1)
        try:
            self._nvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown: %s", exc)


def _load_nvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")  # the module of nvidia-ml-py
    except ImportError:
        return None
