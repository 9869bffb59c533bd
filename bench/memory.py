"""Memory: a consumer's peak RSS over 2,000 images ÷ its RSS after the first batch (flat: ≤ 1.2).

One real `consumer run` process (TensorFlow loaded, a small Keras classifier so the run stays
short, real 500×375 JPEG decode, prefetch, result writes, acks) drains 2,000 images. This
process samples its `/proc/<pid>/status` every 50 ms: `VmRSS` when the first batch record
appears, and `VmHWM` (the kernel's peak RSS) once the last one has.

    python -m bench.memory [--images 2000]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ROOT, bench_settings, ratio_line, samples, scratch_home
from producer.enqueue import EnqueueRequest, enqueue
from workpool.errors import NotFoundError
from workpool.handoff import child_env
from workpool.runs import RunStore
from workpool.storage import open_result_store


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, … of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Vm") and line.endswith("kB"):
            key, value = line.split(":", 1)
            values[key] = int(value.split()[0])
    return values


@dataclass
class MemoryResult:
    images: int
    batches: int
    rss_first_batch_kib: int
    peak_kib: int
    samples: list[tuple[int, int]] = field(default_factory=list)  # (batches done, VmRSS KiB)

    @property
    def ratio(self) -> float:
        return self.peak_kib / self.rss_first_batch_kib


def build_model(folder: Path) -> Path:
    """The small classifier, built in a child process (TensorFlow's start-up chatter stays out of the figures)."""
    code = (
        "import sys, pathlib\n"
        "from tests.support.models import save_tiny_classifier\n"
        "print(save_tiny_classifier(pathlib.Path(sys.argv[1])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def measure(images: int = 2000, batch: int = 32) -> MemoryResult:
    source = samples(images, (500, 375))
    with scratch_home("memory") as home:
        model = build_model(home / "models")
        settings = bench_settings(home, "memory", batch_size=batch)
        summary = enqueue(
            settings,
            EnqueueRequest(source=str(source), run_id="memory", task="classification", model=str(model)),
            progress_bar=False,
        )
        runs = RunStore(open_result_store(settings))
        env = child_env(settings)
        log = home / "consumer.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "consumer", "run", "--worker-id", "memory", "--workers", "1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        first: int | None = None
        trace: list[tuple[int, int]] = []
        peak = 0
        deadline = time.monotonic() + 600
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"consumer exited early: {log.read_text(errors='replace')[-2000:]}")
                status = status_kib(proc.pid)
                try:
                    done = len(runs.record_batch_ids("memory"))
                except NotFoundError:
                    done = 0
                if done and first is None:
                    first = status["VmRSS"]
                if done and (not trace or trace[-1][0] != done):
                    trace.append((done, status["VmRSS"]))
                if done >= summary.batches:
                    peak = status_kib(proc.pid)["VmHWM"]
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"memory run not done after 600 s ({done}/{summary.batches} batches)")
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    assert first is not None
    return MemoryResult(summary.images, summary.batches, first, peak, trace)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args(argv)
    print("Memory: one consumer process, small Keras classifier, 500×375 JPEGs, batch 32", flush=True)
    result = measure(args.images)
    marks = {round(len(result.samples) * f) for f in (0.25, 0.5, 0.75)}
    shown = [s for i, s in enumerate(result.samples, start=1) if i in marks or i == 1 or i == len(result.samples)]
    print("  " + ", ".join(f"after {b} batches {kib / 1024:.0f} MiB" for b, kib in shown))
    print(
        f"  {result.images} images in {result.batches} batches: RSS after the first batch "
        f"{result.rss_first_batch_kib / 1024:.0f} MiB, peak (VmHWM) {result.peak_kib / 1024:.0f} MiB"
    )
    line = ratio_line("memory peak RSS ÷ RSS after first batch", result.ratio, "≤ 1.2")
    print(line, flush=True)
    return [line]


if __name__ == "__main__":
    main()
