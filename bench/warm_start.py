"""Warm start: the first batch of a fresh consumer against its steady batches.

    .venv/bin/python -m bench.warm_start [--arch inceptionv3] [--batch-size 32] [--batches 5]
                                         [--cases pending,setting,cold] [--repeats 2]

Each case starts a fresh `consumer run` process (the real command: embedded queue, real photos
as local JPEG files, a random-weight model of the architecture, which computes like the trained
one) and lets it drain one run:

- `pending` (the figure): the run is enqueued first; the consumer finds it pending on its queue
  and loads and warms the run's model before it takes its first batch;
- `setting`: the consumer starts on an empty queue with `WORKPOOL_MODEL` naming the model; the
  run is enqueued once it is up;
- `cold` (how every consumer started before warm-up existed): the consumer starts on an empty
  queue without that setting; the run is enqueued once it is up, so the model is loaded and
  traced inside the first batch.

First-batch time: the first batch's ack − its dequeue. Steady batch time: the median interval
between consecutive acks from the second batch on. Ratio = first ÷ steady, the median over
`--repeats` rounds of the cases in turn (goal ≤ 1.2 for `pending` and `setting`; `cold` shows
what the warm-up removes from the drain).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import CACHE, ROOT, bench_settings, photos, ratio_line, scratch_home
from orchestration.tools.random_models import build_model
from producer.enqueue import EnqueueRequest, enqueue
from workpool.handoff import child_env
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

CASES = ("pending", "setting", "cold")
# What the consumer logs once it is up (before its start-up, warm-up included, runs).
UP = "consuming queue"


@dataclass(frozen=True)
class Case:
    name: str
    first_s: float
    steady_s: float
    batches: int

    @property
    def ratio(self) -> float:
        return self.first_s / self.steady_s


def start_consumer(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "consumer", "run", "--workers", "1", "--worker-id", "warm-start"]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, env=child_env(settings), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_until_up(process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while UP not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"consumer did not come up:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    time.sleep(1.0)  # past its start-up: with an empty queue there is nothing to warm


def run_case(name: str, model: Path, photos: Path, home: Path, batch_size: int) -> Case:
    settings = bench_settings(home, f"warm-{name}", batch_size=batch_size, idle_exit_s=3.0,
                              model=str(model) if name == "setting" else None)  # fmt: skip
    request = EnqueueRequest(source=str(photos), run_id=name, model=str(model))
    log_path = home / f"{name}.log"
    if name == "pending":
        enqueue(settings, request, progress_bar=False)
        process = start_consumer(settings, log_path)
    else:
        process = start_consumer(settings, log_path)
        wait_until_up(process, log_path)
        enqueue(settings, request, progress_bar=False)
    if process.wait(timeout=900) != 0:
        raise RuntimeError(f"consumer exited {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
    records = sorted(RunStore(open_result_store(settings)).read_batch_records(name), key=lambda r: r.acked_at)
    first = records[0]
    intervals = [(b.acked_at - a.acked_at).total_seconds() for a, b in itertools.pairwise(records)]
    return Case(name, (first.acked_at - first.dequeued_at).total_seconds(), statistics.median(intervals), len(records))


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="inceptionv3", help="inceptionv3, vgg16, resnet50 or mobilenetv2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5, help="batches per run (at least 3)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every case, interleaved (median ratio)")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    if unknown := sorted(set(cases) - set(CASES)):
        parser.error(f"--cases: unknown {', '.join(unknown)}; expected {', '.join(CASES)}")
    if args.batches < 3:
        parser.error("--batches: at least 3 (a first batch and two steady intervals)")
    model = build_model(args.arch, CACHE / "models")
    folder = photos(args.batch_size * args.batches)
    print(f"Warm start: fresh `consumer run`, {args.arch} (random weights), {args.batches} batches of "
          f"{args.batch_size} real photos, embedded queue", flush=True)  # fmt: skip
    ratios: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name in cases:  # interleaved, so a change in the machine's load falls on every case
            with scratch_home(f"warm-{name}") as home:
                case = run_case(name, model, folder, home, args.batch_size)
            ratios[name].append(case.ratio)
            print(f"  {name:8s} first batch {case.first_s:6.2f} s, steady batch {case.steady_s:6.2f} s (median "
                  f"of {case.batches - 1} intervals), first ÷ steady {case.ratio:.2f}", flush=True)  # fmt: skip
    lines = []
    for name, values in ratios.items():
        label = f"warm start ({name}): first batch ÷ steady batch, median of {len(values)}"
        lines.append(ratio_line(label, statistics.median(values), "≤ 1.2" if name != "cold" else ""))
    print("\n".join(lines), flush=True)
    return lines


if __name__ == "__main__":
    main()
