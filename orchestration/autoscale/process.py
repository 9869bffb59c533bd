"""Where the autoscaler runs: in the foreground (`orchestration autoscale`, `launch --autoscale
--wait`) or as a detached process beside the pool (`launch --autoscale` without `--wait`).

The detached autoscaler is the same command, `orchestration autoscale`, started in its own
session with its output in `<home>/autoscale/<queue>.log`; it lives on this machine whatever
the backend (a cluster's nodes do not run it). `teardown` stops it first, so it cannot scale a
pool that is being torn down. Its pid is in the state it writes (`pools/<queue>/autoscaler.json`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from orchestration.autoscale.loop import Autoscaler
from orchestration.autoscale.policy import Limits
from orchestration.autoscale.state import read_state
from orchestration.launcher import Launcher
from orchestration.local_state import pid_alive
from orchestration.reports.drain import DrainReport, messages_on, wait_for_drain
from workpool.errors import UsageError
from workpool.handoff import setting_text
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import Settings, env_name
from workpool.storage import open_result_store

log = logging.getLogger("orchestration.autoscale")

MARKER = "autoscale"  # in the detached process's command line: guards against pid reuse
# How long a node of an autoscaled pool may take to finish the batch it is scoring when the
# autoscaler scales in (`stop_finish_s`), unless set: below the local supervisor's 30 s grace.
NODE_STOP_FINISH_S = 25.0


def with_finishing_nodes(settings: Settings) -> Settings:
    """The settings an autoscaled pool's nodes start with: a node told to stop (scale-in)
    finishes the batch it is scoring instead of abandoning it (`WORKPOOL_STOP_FINISH_S`)."""
    if settings.stop_finish_s > 0:
        return settings
    return settings.model_copy(update={"stop_finish_s": NODE_STOP_FINISH_S})


def log_path(settings: Settings) -> Path:
    return (settings.home / "autoscale" / f"{settings.queue}.log").absolute()


def build(
    settings: Settings,
    launcher: Launcher,
    limits: Limits,
    *,
    deadline: datetime | None = None,
    interval_s: float | None = None,
) -> Autoscaler:
    return Autoscaler(
        settings,
        launcher,
        open_queue(settings),
        RunStore(open_result_store(settings)),
        limits,
        deadline=deadline,
        interval_s=settings.autoscale_interval_s if interval_s is None else interval_s,
    )


def limits_from(settings: Settings, min_nodes: int, max_nodes: int) -> Limits:
    return Limits(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        batches_per_node=settings.autoscale_batches_per_node,
        idle_s=settings.autoscale_idle_s,
        cooldown_s=settings.autoscale_cooldown_s,
    )


def launch_with_autoscaler(autoscaler: Autoscaler) -> int:
    """Launch the pool at the size the policy wants now (0 on an empty queue, where the backend
    allows a pool of 0); returns that size."""
    launcher = autoscaler.launcher
    autoscaler.prepare()
    first = autoscaler.observe().decision.target
    try:
        launcher.launch(first)
    except UsageError:
        if first != 0:
            raise
        # A backend that refuses to create an empty pool (Azure Batch) starts with one node; the
        # autoscaler takes it back to zero after --idle-s.
        first = 1
        launcher.launch(first)
    return first


def start_detached(
    settings: Settings,
    backend: str,
    min_nodes: int,
    max_nodes: int,
    deadline: datetime | None,
    config: Path | None,
    options: Sequence[str] = (),
) -> int:
    """Start `orchestration autoscale` detached from this terminal; returns its pid.

    `options`: more of its flags (--idle-s, --cooldown-s, ...), as `launch --autoscale` got them."""
    running = read_state(open_result_store(settings), settings.queue)
    if running and running["running"] and _ours(running):
        raise UsageError(
            f"an autoscaler for queue {settings.queue} is already running (pid {running['pid']}): "
            "`orchestration teardown` stops it with the pool"
        )
    args = [sys.executable, "-m", "orchestration", MARKER, "--min", str(min_nodes), "--max", str(max_nodes)]
    args += ["--backend", backend]
    if deadline is not None:
        args += ["--deadline", deadline.isoformat()]
    if config is not None:
        args += ["--config", str(config.absolute())]
    args += list(options)
    env = dict(os.environ)
    # Every setting this command resolved (its flags, a `Pool`'s keyword overrides, the config
    # file) travels in the environment, secrets included (never on the command line), so the
    # autoscaler and the nodes it adds see exactly these settings; queue and home always.
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is not None and value != info.default:
            env[env_name(name)] = setting_text(value)
    env["WORKPOOL_QUEUE"] = settings.queue
    env["WORKPOOL_HOME"] = str(settings.home.absolute())
    env["PYTHONUNBUFFERED"] = "1"
    if settings.stop_finish_s > 0:  # nodes it adds (a cluster's new tasks) finish their batch on scale-in too
        env["WORKPOOL_STOP_FINISH_S"] = str(settings.stop_finish_s)
    path = log_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    # A long-lived caller (a notebook's `Pool.launch`) reaps it when it ends: no zombie, no
    # "subprocess still running" warning when the Popen object goes.
    threading.Thread(target=proc.wait, name=f"reap-autoscaler-{proc.pid}", daemon=True).start()
    return proc.pid


def _ours(state: dict[str, object]) -> bool:
    return state.get("host") == socket.gethostname() and pid_alive(int(str(state.get("pid", 0))), MARKER)


def stop_detached(settings: Settings, timeout_s: float = 30.0) -> int | None:
    """SIGTERM this machine's running autoscaler of the queue and wait for it; its pid, or None."""
    state = read_state(open_result_store(settings), settings.queue)
    if not state or state.get("stopped") or not _ours(state):
        return None
    pid = int(state["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid, MARKER) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid, MARKER):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pid


@contextmanager
def running_in_background(autoscaler: Autoscaler) -> Iterator[threading.Event]:
    """The loop in a thread for the block's duration (`launch --autoscale --wait`)."""
    stop = threading.Event()
    failure: list[BaseException] = []

    def body() -> None:
        try:
            autoscaler.run(stop)
        except BaseException as exc:  # reported when the block ends
            failure.append(exc)

    thread = threading.Thread(target=body, name="autoscaler", daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(60)
    if failure:
        raise failure[0]


def autoscale_until_drained(
    autoscaler: Autoscaler,
    run_ids: list[str],
    *,
    say: Callable[[str], None] = lambda _: None,
    timeout_s: float | None = None,
) -> list[DrainReport]:
    """Launch at the policy's size, autoscale in the foreground until `run_ids` (or, with none,
    the queue) have drained; the caller tears the pool down."""
    size = launch_with_autoscaler(autoscaler)
    say(f"launched {size} node(s) on {autoscaler.launcher.name}; autoscaling {autoscaler.limits.min_nodes}:"
        f"{autoscaler.limits.max_nodes}")  # fmt: skip
    reports = []
    with running_in_background(autoscaler):
        if not run_ids:
            say("no pending runs on this queue: waiting for the queue to empty")
            while messages_on(autoscaler.queue):
                time.sleep(1.0)
        for run_id in run_ids:
            say(f"waiting for run {run_id} to drain")
            reports.append(wait_for_drain(autoscaler.runs, autoscaler.queue, run_id, timeout_s=timeout_s))
    return reports
