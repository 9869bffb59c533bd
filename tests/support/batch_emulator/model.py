"""The things an emulated Batch account holds: pools, nodes, jobs, tasks, and their timing.

Plain records; `state.Account` changes them under its lock and moves them along in time.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.batch_emulator.node import Failure, NodeHost


class BatchError(Exception):
    """An error answer of the service: HTTP status, Batch error code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Timing:
    """How long things take on the emulated service (seconds)."""

    resize_s: float = 1.0  # a resize, remove-nodes or pool creation until nodes come or go
    boot_s: float = 0.2  # a new node from `creating` to running its start task
    stop_resize_s: float = 0.2  # `stopping` until `steady`
    delete_s: float = 0.3  # a deleted pool or job until it is gone
    terminate_grace_s: float = 10.0  # SIGTERM ... SIGKILL when a task is terminated
    replace_preempted_s: float | None = 1.0  # a preempted Spot node is replaced after this (None: never)
    tick_s: float = 0.05


def now_iso(at: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    kill_at: float | None = None  # set when terminated: SIGKILL if still alive then


@dataclass
class Task:
    job_id: str
    id: str
    body: dict[str, Any]
    created: float
    state: str = "active"
    previous_state: str | None = None
    state_time: float = 0.0
    node_id: str | None = None
    node_root: Path | None = None
    proc: Proc | None = None
    exit_code: int | None = None
    failure: Failure | None = None
    retry_count: int = 0
    requeue_count: int = 0
    last_requeue: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    terminated: bool = False

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.previous_state, self.state, self.state_time = self.state, state, time.time()

    @property
    def max_retries(self) -> int:
        return int((self.body.get("constraints") or {}).get("maxTaskRetryCount", 0) or 0)


@dataclass
class Job:
    id: str
    body: dict[str, Any]
    created: float
    state: str = "active"
    previous_state: str | None = None
    state_time: float = 0.0
    end_time: float | None = None
    terminate_reason: str | None = None
    gone_at: float | None = None
    tasks: dict[str, Task] = field(default_factory=dict)

    @property
    def pool_id(self) -> str:
        return str((self.body.get("poolInfo") or {}).get("poolId", ""))

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.previous_state, self.state, self.state_time = self.state, state, time.time()


@dataclass
class StartTaskRun:
    state: str = "running"  # running | completed
    start_time: float = 0.0
    end_time: float | None = None
    exit_code: int | None = None
    failure: Failure | None = None
    retry_count: int = 0
    stderr: str = ""  # what the try wrote to startup/stderr.txt (the next try starts the file afresh)


@dataclass
class Node:
    id: str
    pool_id: str
    dedicated: bool
    host: NodeHost
    created: float
    state: str = "creating"
    state_time: float = 0.0
    start: StartTaskRun | None = None
    start_history: list[StartTaskRun] = field(default_factory=list)  # every finished try (tests read it)
    start_proc: Proc | None = None
    preparing: bool = False  # resource files being fetched in a thread
    task: Task | None = None
    leaving: str | None = None  # nodeDeallocationOption once chosen to leave the pool
    preempted_at: float | None = None
    preempt_at: float | None = None  # announced through Scheduled Events; killed then
    removed: bool = False
    total_tasks_run: int = 0
    total_tasks_succeeded: int = 0
    recent: list[Task] = field(default_factory=list)
    ip: str = "10.0.0.4"

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.state_time = state, time.time()

    @property
    def ready(self) -> bool:
        return self.state == "idle" and self.task is None and self.leaving is None and not self.removed


@dataclass
class Resize:
    due: float
    deallocation: str = "requeue"
    remove_ids: list[str] | None = None  # remove-nodes: exactly these
    stopping: bool = False
    applied: bool = False


@dataclass
class Pool:
    id: str
    body: dict[str, Any]
    created: float
    target_dedicated: int
    target_low: int
    state: str = "active"
    state_time: float = 0.0
    allocation_state: str = "resizing"
    allocation_time: float = 0.0
    resize: Resize | None = None
    resize_errors: list[dict[str, Any]] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)
    gone_at: float | None = None

    @property
    def start_task(self) -> dict[str, Any] | None:
        start: dict[str, Any] | None = self.body.get("startTask")
        return start

    def counts(self) -> tuple[int, int]:
        live = [n for n in self.nodes.values() if not n.removed]
        return sum(n.dedicated for n in live), sum(not n.dedicated for n in live)


def etag(at: float) -> str:
    return f'"0x{int(at * 1_000_000):X}"'
