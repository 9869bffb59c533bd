"""What the benchmarks share: fresh storage, sample JPEGs, a local pool run to its drain, printing.

Every benchmark measures the things it compares side by side in one run and prints their ratio
last (`ratio_line`), because absolute numbers on a shared machine are noise.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration.backends.local import LocalLauncher
from orchestration.local_state import read_pool
from orchestration.reports.drain import DrainReport, wait_for_drain
from orchestration.tools.samples import write_photos, write_samples
from producer.enqueue import EnqueueRequest, enqueue
from workpool.queue import open_queue
from workpool.runs import BatchRecord, RunStore
from workpool.settings import Settings, load_settings
from workpool.storage import open_result_store

ROOT = Path(__file__).resolve().parents[1]
SLEEP_TASK = "consumer.tasks.examples:SleepTask"
SLEEP_ENV = "WORKPOOL_EXAMPLE_SLEEP_S"
# Sample images are cached here between runs (the demo's own samples live elsewhere).
CACHE = ROOT / ".workpool" / "bench-cache"


def machine() -> str:
    """One line naming this machine, for the printed figures."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        lines = Path("/proc/meminfo").read_text().splitlines()
        kib = next(int(x.split()[1]) for x in lines if x.startswith("MemTotal"))
        mem_gib = kib / 2**20
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, no GPU, Python {platform.python_version()}"


def ratio_line(name: str, value: float, goal: str = "") -> str:
    """The last line a benchmark prints: `RATIO <name> = <value>  (goal ...)`."""
    return f"RATIO {name} = {value:.3f}" + (f"  (goal {goal})" if goal else "")


def rate_line(name: str, value: float, unit: str) -> str:
    """A measured rate (not a ratio), printed with the ratios: `RATE <name> = <value> <unit>`."""
    return f"RATE {name} = {value:,.0f} {unit}"


def efficiency(t1_s: float, nodes: int, tn_s: float) -> float:
    """Strong-scaling efficiency: T1 ÷ (N·TN); 1.0 is linear."""
    return t1_s / (nodes * tn_s) if nodes > 0 and tn_s > 0 else 0.0


@contextlib.contextmanager
def scratch_home(prefix: str) -> Iterator[Path]:
    """A fresh WORKPOOL_HOME, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"workpool-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def bench_settings(home: Path, queue: str, **changes: Any) -> Settings:
    """Settings for a fresh queue under `home` (embedded unless a connection string is given)."""
    return load_settings(home=home, queue=queue, results=f"{queue}-results", **changes)


def samples(count: int, size: tuple[int, int]) -> Path:
    """A folder of exactly `count` photo-like JPEGs of `size` (width, height), cached between runs."""
    folder = CACHE / f"jpeg-{size[0]}x{size[1]}-{count}"
    write_samples(folder, count, size)
    return folder


# Distinct real photos `write_photos` makes (5 photos × mirror images and crops down to ~60 %).
REAL_PHOTOS = 100


def photos(count: int, size: tuple[int, int] | None = None) -> Path:
    """A folder of `count` real-photo JPEGs (as shipped, or re-encoded at `size`), cached between runs.

    Beyond the `REAL_PHOTOS` distinct ones, the files are links to them under other names: each
    is still fetched and decoded on its own, and no crop is smaller than ~60 % of its photo.
    """
    label = "" if size is None else f"-{size[0]}x{size[1]}"
    base = CACHE / f"photos{label}-{REAL_PHOTOS}"
    names = write_photos(base, REAL_PHOTOS, size)
    folder = CACHE / f"photo-links{label}-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        link = folder / f"{i:05d}_{names[i % len(names)]}"
        if not link.exists():
            os.link(base / names[i % len(names)], link)
    return folder


@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration (local nodes inherit them)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class PoolRun:
    nodes: int
    report: DrainReport
    launch_s: float  # launch until every node polls the queue (not part of the drain wall time)
    records: list[BatchRecord]

    @property
    def drain_wall_s(self) -> float:
        return self.report.drain_wall_s


_POLLING = re.compile(r"consuming queue")


def wait_until_polling(launcher: LocalLauncher, nodes: int, timeout_s: float = 120.0) -> None:
    """Until every node's log says it is consuming the queue (start-up done, polling)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pool = read_pool(launcher.directory)
        if pool is not None and len(pool.nodes) == nodes:
            logs = [launcher.log_dir / f"{n.id}.log" for n in pool.nodes]
            if all(p.exists() and _POLLING.search(p.read_text(errors="replace")) for p in logs):
                return
        time.sleep(0.1)
    raise TimeoutError(f"{nodes} local node(s) not polling after {timeout_s:.0f} s")


def run_pool(settings: Settings, source: Path, nodes: int, run_id: str, *, task: str = SLEEP_TASK) -> PoolRun:
    """Launch `nodes` local nodes, wait until all poll, enqueue `source`, wait for the drain, tear down.

    Enqueueing only once every node polls keeps process start-up (seconds on 2 cores with 16
    Python processes) out of the drain wall time, which runs from the first dequeue to the last
    ack; what is left in it is the pool's own cost.
    """
    launcher = LocalLauncher(settings, grace_s=10.0)
    queue = open_queue(settings)
    queue.create()
    started = time.monotonic()
    launcher.launch(nodes)
    try:
        wait_until_polling(launcher, nodes)
        launch_s = time.monotonic() - started
        enqueue(settings, EnqueueRequest(source=str(source), run_id=run_id, task=task), progress_bar=False)
        runs = RunStore(open_result_store(settings))
        report = wait_for_drain(runs, queue, run_id, poll_s=0.25, settle_s=5.0)
        records = runs.read_batch_records(run_id)
    finally:
        launcher.teardown()
    if not report.ok or report.images_ok != report.images:
        raise RuntimeError(f"run {run_id} on {nodes} node(s) did not drain cleanly: {report.to_json()}")
    return PoolRun(nodes=nodes, report=report, launch_s=launch_s, records=records)
