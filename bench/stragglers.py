"""Stragglers: 8 nodes, one at a quarter of the others' speed, on the embedded queue.

Eight `consumer run` processes run `SleepTask`; the straggler's per-image sleep is 4× the
others' (`WORKPOOL_EXAMPLE_SLEEP_S` per process). From the same run:

- queue drain time: first dequeue → last ack (every node polling before the run is enqueued);
- ideal: total images ÷ the sum of the nodes' measured speeds (each node's images ÷ its busy
  time, from its batch records), i.e. perfect sharing of the same work at the same speeds;
- static shards (the old recipe: an equal slice per node, no sharing): the slowest node's slice
  ÷ its measured speed, computed from the same measured speeds.

    python -m bench.stragglers
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.common import (
    ROOT,
    SLEEP_ENV,
    SLEEP_TASK,
    bench_settings,
    ratio_line,
    samples,
    scratch_home,
)
from orchestration.reports.drain import wait_for_drain
from producer.enqueue import EnqueueRequest, enqueue
from workpool.handoff import child_env
from workpool.queue import open_queue
from workpool.runs import BatchRecord, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store


@dataclass(frozen=True)
class StragglerResult:
    images: int
    drain_s: float
    speeds: dict[str, float]  # worker → images/s while busy
    images_by_worker: dict[str, int]
    finished_s: dict[str, float]  # worker → its last ack, seconds after the run's first dequeue

    @property
    def ideal_s(self) -> float:
        return ideal_time(self.images, list(self.speeds.values()))

    @property
    def static_s(self) -> float:
        return static_shard_time(self.images, list(self.speeds.values()))


def ideal_time(images: int, speeds: list[float]) -> float:
    """Perfect sharing: the total work over the total speed."""
    return images / sum(speeds)


def static_shard_time(images: int, speeds: list[float]) -> float:
    """Equal slices (the last ones one image shorter when it does not divide): the slowest node sets the time."""
    n = len(speeds)
    slices = [images // n + (1 if i < images % n else 0) for i in range(n)]
    # The largest slices go to the first nodes; give the straggler a largest one, as is likely.
    return max(s / v for s, v in zip(slices, sorted(speeds), strict=True))


def node_speeds(records: list[BatchRecord]) -> tuple[dict[str, float], dict[str, int]]:
    """Each worker's images ÷ its busy time (start of scoring → ack, summed over its batches)."""
    busy: dict[str, float] = defaultdict(float)
    images: dict[str, int] = defaultdict(int)
    for r in records:
        started = getattr(r, "started_at", None)
        start = datetime.fromisoformat(started) if isinstance(started, str) else (started or r.dequeued_at)
        busy[r.worker] += (r.acked_at - start).total_seconds()
        images[r.worker] += r.images
    return {w: images[w] / busy[w] for w in busy if busy[w] > 0}, dict(images)


def spawn_node(settings: Settings, node_id: str, sleep_s: float, log: Path) -> subprocess.Popen[bytes]:
    env = child_env(settings)
    env[SLEEP_ENV] = str(sleep_s)
    env["PYTHONUNBUFFERED"] = "1"
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer", "run", "--worker-id", node_id, "--workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def measure(
    nodes: int = 8, slow_factor: float = 4.0, sleep_s: float = 0.02, batch: int = 8, images: int = 5800
) -> StragglerResult:
    source = samples(images, (64, 48))
    with scratch_home("stragglers") as home:
        settings = bench_settings(home, "stragglers", batch_size=batch)
        open_queue(settings).create()
        procs: list[subprocess.Popen[bytes]] = []
        logs = [home / f"node-{i}.log" for i in range(1, nodes + 1)]
        try:
            for i, log in enumerate(logs, start=1):
                node_sleep = sleep_s * slow_factor if i == nodes else sleep_s
                procs.append(spawn_node(settings, f"node-{i}{'-slow' if i == nodes else ''}", node_sleep, log))
            deadline = time.monotonic() + 120
            while not all("consuming queue" in p.read_text(errors="replace") for p in logs if p.exists()) or not all(
                p.exists() for p in logs
            ):
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError("straggler nodes did not start: " + logs[0].read_text(errors="replace")[-2000:])
                time.sleep(0.1)
            run_id = f"stragglers-{int(time.time())}"
            enqueue(settings, EnqueueRequest(source=str(source), run_id=run_id, task=SLEEP_TASK), progress_bar=False)
            runs = RunStore(open_result_store(settings))
            report = wait_for_drain(runs, open_queue(settings), run_id, poll_s=0.25, settle_s=5.0)
            records = runs.read_batch_records(run_id)
        finally:
            for p in procs:
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    if not report.ok or report.images_ok != images:
        raise RuntimeError(f"straggler run did not drain cleanly: {report.to_json()}")
    speeds, by_worker = node_speeds(records)
    return StragglerResult(images, report.drain_wall_s, speeds, by_worker, finish_times(records))


def finish_times(records: list[BatchRecord]) -> dict[str, float]:
    """Each worker's last ack, in seconds after the run's first dequeue (where the tail is)."""
    start = min(r.dequeued_at for r in records)
    finished: dict[str, float] = {}
    for r in records:
        finished[r.worker] = max(finished.get(r.worker, 0.0), (r.acked_at - start).total_seconds())
    return finished


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5800)
    args = parser.parse_args(argv)
    print("Stragglers: 8 local nodes (SleepTask 20 ms/image), one at a quarter of the speed", flush=True)
    result = measure(images=args.images)
    for worker in sorted(result.speeds):
        scored = result.images_by_worker[worker]
        print(
            f"  {worker:12s} {result.speeds[worker]:7.1f} images/s busy, scored {scored} images, "
            f"last ack at {result.finished_s[worker]:.2f} s"
        )
    print(f"  queue drain {result.drain_s:.2f} s, ideal {result.ideal_s:.2f} s, static shards {result.static_s:.2f} s")
    ratios = [
        ratio_line("static shards ÷ queue drain (speedup from the queue)", result.static_s / result.drain_s),
        ratio_line("static shards ÷ ideal", result.static_s / result.ideal_s),
        ratio_line("straggler queue drain ÷ ideal", result.drain_s / result.ideal_s, "≤ 1.10"),
    ]
    print("\n".join(ratios), flush=True)
    return ratios


if __name__ == "__main__":
    main()
