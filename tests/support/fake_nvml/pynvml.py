"""A fake NVML (the `pynvml` module of nvidia-ml-py) for tests: put this folder first on a
consumer's PYTHONPATH and `consumer/gpu_stats.py` samples these GPUs instead of real ones.

It answers with what NVML would on a machine with `FAKE_NVML_GPUS` GPUs (default 1), each
`FAKE_NVML_BUSY` % busy (default 73) with `FAKE_NVML_MEMORY_MB` MiB in use (default 5120).
`FAKE_NVML_GPUS=0` is a machine whose driver finds no GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class NVMLError(Exception):
    pass


@dataclass(frozen=True)
class _Utilization:
    gpu: int
    memory: int


@dataclass(frozen=True)
class _Memory:
    total: int
    free: int
    used: int


_initialized = False


def _gpus() -> int:
    return int(os.environ.get("FAKE_NVML_GPUS", "1"))


def _check(handle: int | None = None) -> None:
    if not _initialized:
        raise NVMLError("Uninitialized")
    if handle is not None and not 0 <= handle < _gpus():
        raise NVMLError("Invalid Argument")


def nvmlInit() -> None:
    global _initialized
    _initialized = True


def nvmlShutdown() -> None:
    global _initialized
    _check()
    _initialized = False


def nvmlDeviceGetCount() -> int:
    _check()
    return _gpus()


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    _check(index)
    return index


def nvmlDeviceGetUtilizationRates(handle: int) -> _Utilization:
    _check(handle)
    return _Utilization(gpu=int(os.environ.get("FAKE_NVML_BUSY", "73")), memory=40)


def nvmlDeviceGetMemoryInfo(handle: int) -> _Memory:
    _check(handle)
    used = int(float(os.environ.get("FAKE_NVML_MEMORY_MB", "5120")) * 2**20)
    total = 16 * 2**30
    return _Memory(total=total, free=total - used, used=used)
