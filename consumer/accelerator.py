"""Refuse to score on the CPU of a machine whose GPUs the framework cannot see.

A GPU node whose TensorFlow lacks the CUDA libraries (plain `tensorflow` instead of
`tensorflow[and-cuda]`, no cuDNN on the image) scores every batch on its CPU, a hundred times
slower, while `nvidia-smi` counts the GPUs and `--workers auto` starts one worker per GPU.
Nothing fails, the run just takes days. So: when the driver lists GPUs (`nvidia-smi -L`, else
/proc/driver/nvidia/gpus) and the framework sees none, stop with a message that says so;
`--allow-cpu` (WORKPOOL_ALLOW_CPU) scores on the CPU anyway. `CUDA_VISIBLE_DEVICES=-1` (or empty)
means the user chose the CPU: no check.

A GPU VM size (the N-series: NC, ND, NV families, `WORKPOOL_VM_SIZE`) where the driver lists no
GPU at all fails too: an image without a driver, or a driver that does not drive the card, would
otherwise score on the CPU without a word.

The node bootstrap runs the same check (`python -m consumer.accelerator`) at the end of the
start task, so such a node fails its start task instead of taking work.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from workpool.errors import WorkpoolError

log = logging.getLogger(__name__)


# Azure's GPU families: NC (compute), ND (deep learning), NV (visualisation), e.g. Standard_NC24ads_A100_v4.
_GPU_SIZE = re.compile(r"^(standard_)?n[cdv]\d", re.IGNORECASE)
VM_SIZE_ENV = "WORKPOOL_VM_SIZE"


class AcceleratorError(WorkpoolError):
    """The machine has GPUs the framework cannot use, or a GPU size shows none."""


def is_gpu_size(vm_size: str | None) -> bool:
    """Whether an Azure VM size is a GPU size (NC, ND, NV families)."""
    return bool(vm_size) and _GPU_SIZE.match((vm_size or "").strip()) is not None


def listed_gpus() -> list[str]:
    """The GPUs the NVIDIA driver lists on this machine (whatever CUDA_VISIBLE_DEVICES says)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=False)
        if out.returncode == 0:
            return [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU ")]
    except (OSError, subprocess.TimeoutExpired):
        pass
    proc = Path("/proc/driver/nvidia/gpus")
    return [p.name for p in sorted(proc.iterdir())] if proc.is_dir() else []


def framework_gpus() -> list[str]:
    """The GPUs TensorFlow can use in this process."""
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def cpu_chosen(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    pinned = env.get("CUDA_VISIBLE_DEVICES")
    return pinned is not None and pinned.strip() in ("", "-1")


def check_accelerator(allow_cpu: bool, vm_size: str | None = None) -> None:
    """Raise AcceleratorError when this machine would score on the CPU where a GPU was meant (unless allowed).

    - the driver lists GPUs and TensorFlow sees none;
    - `vm_size` is a GPU size (NC, ND, NV) and the driver lists no GPU at all.
    Both pass with `allow_cpu` (a warning says so); `CUDA_VISIBLE_DEVICES=-1` skips the check.
    """
    if cpu_chosen():
        return
    listed = listed_gpus()
    if not listed:
        if not is_gpu_size(vm_size):
            return
        message = (
            f"this node is a GPU size ({vm_size}) but no GPU is visible (nvidia-smi lists none): the image has no "
            "NVIDIA driver or its driver does not drive this GPU; refusing to score on the CPU "
            "(--allow-cpu or WORKPOOL_ALLOW_CPU=true to do it anyway)"
        )
    elif framework_gpus():
        return
    else:
        message = (
            f"this machine has {len(listed)} GPU(s) ({listed[0]}{', …' if len(listed) > 1 else ''}) but TensorFlow "
            "sees none: it lacks the CUDA libraries (install workpool with its `gpu` extra: tensorflow[and-cuda]) or "
            "the driver does not match; refusing to score on the CPU (--allow-cpu or WORKPOOL_ALLOW_CPU=true to do "
            "it anyway)"
        )
    if allow_cpu:
        log.warning("%s; scoring on the CPU as --allow-cpu asks", message.split("; refusing")[0])
        return
    raise AcceleratorError(message)


def main(argv: list[str] | None = None) -> int:
    """`python -m consumer.accelerator [--allow-cpu]`: the node bootstrap's check; exit 1 with the reason.

    The VM size comes from WORKPOOL_VM_SIZE (the launcher puts it in the node's environment).
    """
    args = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of stderr
    try:
        check_accelerator(allow_cpu="--allow-cpu" in args, vm_size=os.environ.get(VM_SIZE_ENV))
    except AcceleratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"accelerator: {len(listed_gpus())} GPU(s) listed by the driver; check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
