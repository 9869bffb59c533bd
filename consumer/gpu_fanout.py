"""`consumer run --workers auto|N`: one worker process per GPU (or per --workers), kept running.

GPUs are counted without initialising CUDA in this (parent) process, which would otherwise
hold device memory on every GPU for the whole run: `CUDA_VISIBLE_DEVICES` when the user set it,
else `nvidia-smi -L`, else the driver's `/proc/driver/nvidia/gpus`. No GPU: one worker.

The parent:
- starts each worker pinned with CUDA_VISIBLE_DEVICES, with SIGTERM/SIGINT held until the
  worker's own handlers are in place (workpool/processes/signals.py), so a stop sent at any moment of its
  start-up is a clean stop, never a death by signal;
- respawns a worker that dies (killed, crashed, exit 1) in its slot, with the local pool's
  crash-loop backoff (workpool/processes/restarts.py). A worker that exits 0 (idle, or told to stop) is
  done; one that exits 2 (bad settings) would only fail the same way again and is not respawned;
- on SIGTERM/SIGINT passes the signal on to every worker and respawns nothing more; a worker
  whose parent is killed outright (SIGKILL) stops by itself (`--parent-pid`), releasing its batch;
- adds up the images of every worker, respawned ones included, from the totals file each one
  keeps current while it runs (`--totals-file`, see `write_totals`), and prints the sum as its
  own last line: 'Worker <id> Processed <n> images, took <H:MM:SS.ffffff>'.

Exit code: 0 when every worker ended cleanly, else 2 if one had bad settings, else 1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from consumer.runner import format_took
from workpool.processes import signals
from workpool.processes.restarts import CrashLoopBackoff

log = logging.getLogger("consumer.gpu_fanout")

EXIT_SETTINGS = 2  # a worker with bad settings: respawning it would fail the same way
STOPPED_BY = frozenset(-s for s in signals.STOP_SIGNALS)  # died of SIGTERM/SIGINT: told to stop


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


# --- the totals channel ----------------------------------------------------------------------
def write_totals(path: Path, worker_id: str, images: int, *, final: bool = False) -> None:
    """A worker's totals so far, replaced atomically: `{"worker", "images", "final"}`.

    `final` is written just before the worker prints its own summary line, so the parent knows
    whether that line exists.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"worker": worker_id, "images": images, "final": final}))
    os.replace(tmp, path)


def read_totals(path: Path) -> tuple[int, bool]:
    """(images, final) from a worker's totals file; (0, False) when it never wrote one."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return 0, False
    return int(data["images"]), bool(data["final"])


# --- the fan-out ------------------------------------------------------------------------------
@dataclass
class Slot:
    """One worker position: its id, its GPU, and the process currently in it."""

    worker_id: str
    gpu: str | None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    lives: int = 0  # processes started in this slot so far
    respawn_at: float | None = None
    outcome: int | None = None  # the slot's exit code once it is finished for good

    @property
    def totals_name(self) -> str:
        return f"{self.worker_id}.{self.lives}.json"


class GpuFanout:
    def __init__(
        self,
        base_id: str,
        count: int,
        gpus: list[str],
        child_args: list[str],
        totals_dir: Path,
        *,
        env: dict[str, str],
        stop_when: Callable[[], str | None],
        poll_s: float = 0.1,
    ) -> None:
        self.slots = [Slot(f"{base_id}-{i}", gpus[i % len(gpus)] if gpus else None) for i in range(count)]
        self.child_args = child_args
        self.env = env  # the parent's settings, handed off (workpool/handoff.py)
        self.totals_dir = totals_dir
        self.stop_when = stop_when
        self.poll_s = poll_s
        self.backoff = CrashLoopBackoff()
        self.stopping: signal.Signals | None = None

    def run(self) -> int:
        for slot in self.slots:
            self.start(slot)
        while any(slot.outcome is None for slot in self.slots):
            if self.stopping is None and self.stop_when() is not None:
                self.stop_all(signals.received() or signal.SIGTERM)
            self.reap()
            now = time.monotonic()
            for slot in self.slots:
                if slot.respawn_at is not None and slot.respawn_at <= now:
                    self.start(slot)
            time.sleep(self.poll_s)
        return exit_code([slot.outcome or 0 for slot in self.slots])

    def start(self, slot: Slot) -> None:
        slot.respawn_at = None
        if self.stopping is not None or self.stop_when() is not None:
            slot.outcome = 0  # told to stop before this worker began: nothing to stop
            return
        env = dict(self.env)
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        slot.lives += 1
        args = [sys.executable, "-m", "consumer", "run", "--workers", "1", "--worker-id", slot.worker_id,
                "--totals-file", str(self.totals_dir / slot.totals_name), "--parent-pid", str(os.getpid()),
                *self.child_args]  # fmt: skip
        slot.proc = signals.spawn_held(args, env=env)
        slot.started_at = time.monotonic()

    def stop_all(self, signum: signal.Signals) -> None:
        """Pass the stop on to every worker; those waiting to be respawned are not."""
        self.stopping = signum
        for slot in self.slots:
            if slot.proc is not None:
                slot.proc.send_signal(signum)
            elif slot.outcome is None:
                slot.outcome = 1  # it had died and was waiting to be respawned
                slot.respawn_at = None

    def reap(self) -> None:
        for slot in self.slots:
            code = None if slot.proc is None else slot.proc.poll()
            if code is None:
                continue
            slot.proc = None
            ran_s = time.monotonic() - slot.started_at
            if code == 0 or code in STOPPED_BY:
                # Done: idle, or told to stop (by us, or by a signal sent to it directly). One
                # that died of the signal before it could print its summary gets it here.
                slot.outcome = 0
                images, final = read_totals(self.totals_dir / slot.totals_name)
                if not final:
                    print(f"Worker {slot.worker_id} Processed {images} images, took {format_took(ran_s)}", flush=True)
            elif code == EXIT_SETTINGS or self.stopping is not None:
                slot.outcome = code
            else:
                delay = self.backoff.after_death(slot.worker_id, code, ran_s, log, f"worker {slot.worker_id}")
                slot.respawn_at = time.monotonic() + delay

    def images(self) -> int:
        """Every worker's images, all its lives included."""
        return sum(read_totals(path)[0] for path in self.totals_dir.glob("*.json"))


def exit_code(codes: list[int]) -> int:
    failed = [c for c in codes if c != 0]
    if not failed:
        return 0
    return EXIT_SETTINGS if EXIT_SETTINGS in failed else 1


def run_workers(
    base_id: str,
    count: int,
    gpus: list[str],
    child_args: list[str],
    *,
    env: dict[str, str],
    stop_when: Callable[[], str | None],
) -> int:
    """Run `count` worker processes until they are done or told to stop; returns the exit code.

    `env` is each worker's environment (the parent's settings as `child_env` hands them off);
    `child_args` are extra `consumer run` arguments (the log level)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="workpool-totals-") as folder:
        fanout = GpuFanout(base_id, count, gpus, child_args, Path(folder), env=env, stop_when=stop_when)
        code = fanout.run()
        images = fanout.images()
    print(f"Worker {base_id} Processed {images} images, took {format_took(time.monotonic() - started)}", flush=True)
    return code
