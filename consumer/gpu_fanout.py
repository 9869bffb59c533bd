"""`--workers auto|N`: one worker process per GPU, each pinned with CUDA_VISIBLE_DEVICES.

GPUs are counted without initialising CUDA in this (parent) process, which would otherwise
hold device memory on every GPU for the whole run: `CUDA_VISIBLE_DEVICES` when the user set it,
else `nvidia-smi -L`, else the driver's `/proc/driver/nvidia/gpus`. No GPU: one worker.

The parent forwards SIGTERM/SIGINT to its children, relays their output, and prints the total
as its own last line. It exits 0 when every child did, else the worst child's code.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from consumer.runner import format_took

_SUMMARY = re.compile(r"^Worker \S+ Processed (\d+) images, took ")


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """Device ids a child may be pinned to; [] on machines without NVIDIA GPUs."""
    env = dict(os.environ) if env is None else env
    pinned = env.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        ids = [d.strip() for d in pinned.split(",") if d.strip()]
        return [] if ids in ([], ["-1"]) else ids
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
        if out.returncode == 0:
            return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]
    except (OSError, subprocess.TimeoutExpired):
        pass
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir():
        return [str(i) for i, _ in enumerate(sorted(gpus.iterdir()))]
    return []


def worker_count(workers: str, gpus: list[str]) -> int:
    if workers == "auto":
        return max(len(gpus), 1)
    return int(workers)


def run_children(base_id: str, count: int, gpus: list[str], child_args: list[str]) -> int:
    """Start `count` consumer processes and wait for them; returns the exit code."""
    started = time.monotonic()
    children: list[subprocess.Popen[str]] = []
    totals = [0] * count
    for i in range(count):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        args = [sys.executable, "-m", "consumer", "run", "--workers", "1", "--worker-id", f"{base_id}-{i}", *child_args]
        children.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True, bufsize=1))

    def relay(i: int, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            match = _SUMMARY.match(line)
            if match:
                totals[i] = int(match.group(1))
            sys.stdout.write(line)
            sys.stdout.flush()

    relays = [threading.Thread(target=relay, args=(i, c), daemon=True) for i, c in enumerate(children)]
    for thread in relays:
        thread.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [child.wait() for child in children]
        for thread in relays:
            thread.join(5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(
        f"Worker {base_id} Processed {sum(totals)} images, took {format_took(time.monotonic() - started)}", flush=True
    )
    failed = [c for c in codes if c != 0]
    if not failed:
        return 0
    return 2 if 2 in failed else 1
