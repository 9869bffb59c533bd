"""The state of one emulated Batch account: pools, nodes, jobs, tasks, and how time moves them.

Everything lives under one lock. HTTP handlers change it (create, resize, terminate, ...) and a
ticker thread calls `Account.tick()` a few times a second, which moves what takes time on real
Batch: a resize settles after `Timing.resize_s`, a node boots, runs its start task and becomes
idle, idle nodes take the next active task, finished processes become exit codes.

What follows the Batch documentation (and the azure-batch 15 docstrings):
- allocationState `resizing` → `steady`; a resize or remove-nodes while not steady is answered
  409 PoolBeingResized; stop-resize goes `stopping` → `steady` at the current node count.
- nodes `creating` → `starting` → `waitingforstarttask` (start task with waitForSuccess) →
  `idle` / `starttaskfailed`; `running` while a task runs; `leavingpool`; `preempted`.
- a start task's resource files are downloaded first; failures and non-zero exits retry up to
  maxTaskRetryCount, then failureInfo says why.
- tasks `active` → `running` → `completed` with exitCode; a non-zero exit is retried up to
  maxTaskRetryCount; terminate = SIGTERM to the process group, SIGKILL after the grace time;
  remove-nodes and shrinking resizes apply nodeDeallocationOption (requeue, terminate,
  taskcompletion, retaineddata); preemption kills a Spot node's processes and requeues its task.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from tests.support.batch_emulator.model import (
    BatchError,
    Job,
    Node,
    Pool,
    Proc,
    Resize,
    StartTaskRun,
    Task,
    Timing,
    etag,
)
from tests.support.batch_emulator.node import Failure, NodeHost, group_alive, signal_group
from tests.support.scheduled_events import scheduled_event

__all__ = ["Account", "BatchError", "Timing"]


class Account:
    """One Batch account's pools and jobs, advanced by `tick()`; see the module docstring."""

    def __init__(self, name: str, url: str, root: Path, base_env: dict[str, str], timing: Timing) -> None:
        self.name = name
        self.url = url
        self.root = root
        self.base_env = base_env
        self.timing = timing
        self.lock = threading.RLock()
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Job] = {}
        self._node_numbers = itertools.count(1)
        self._threads: list[threading.Thread] = []
        self._orphans: list[subprocess.Popen[bytes]] = []  # killed, not yet reaped
        self.groups: set[int] = set()  # every process group a node started (a start task may leave a daemon)
        # Scheduled Events (instance metadata): preemption notices of Spot nodes.
        self.events: list[dict[str, Any]] = []
        self.incarnation = 0
        # Test control: node kinds (dedicated: True, Spot: False) the region refuses, with the resize error.
        self.refusals: dict[bool, tuple[str, str]] = {}

    def _kill(self, proc: Proc | None) -> None:
        if proc is not None:
            signal_group(proc.popen, signal.SIGKILL)
            self._orphans.append(proc.popen)

    # --- pools ------------------------------------------------------------------------------
    def create_pool(self, body: dict[str, Any]) -> None:
        pool_id = body.get("id") or ""
        if not pool_id or not body.get("vmSize"):
            raise BatchError(400, "MissingRequiredProperty", "A pool needs an id and a vmSize.")
        existing = self.pools.get(pool_id)
        if existing is not None:
            if existing.state == "deleting":
                raise BatchError(409, "PoolBeingDeleted", "The specified pool has been marked for deletion.")
            raise BatchError(409, "PoolExists", "The specified pool already exists.")
        now = time.time()
        pool = Pool(
            pool_id,
            body,
            now,
            int(body.get("targetDedicatedNodes") or 0),
            int(body.get("targetLowPriorityNodes") or 0),
            state_time=now,
            allocation_time=now,
        )
        pool.resize = Resize(due=now + self.timing.resize_s)
        self.pools[pool_id] = pool

    def pool(self, pool_id: str) -> Pool:
        pool = self.pools.get(pool_id)
        if pool is None:
            raise BatchError(404, "PoolNotFound", "The specified pool does not exist.")
        return pool

    def _changeable(self, pool_id: str) -> Pool:
        pool = self.pool(pool_id)
        if pool.state == "deleting":
            raise BatchError(409, "PoolBeingDeleted", "The specified pool has been marked for deletion.")
        if pool.allocation_state != "steady":
            raise BatchError(409, "PoolBeingResized", "The specified pool is being resized.")
        return pool

    def resize_pool(self, pool_id: str, body: dict[str, Any]) -> None:
        pool = self._changeable(pool_id)
        if "targetDedicatedNodes" in body:
            pool.target_dedicated = int(body["targetDedicatedNodes"] or 0)
        if "targetLowPriorityNodes" in body:
            pool.target_low = int(body["targetLowPriorityNodes"] or 0)
        self._begin_resize(
            pool, Resize(time.time() + self.timing.resize_s, body.get("nodeDeallocationOption") or "requeue")
        )

    def update_pool(self, pool_id: str, body: dict[str, Any]) -> None:
        """PATCH: the given properties replace the pool's; a new start task applies to nodes that join later."""
        pool = self.pool(pool_id)
        if pool.state == "deleting":
            raise BatchError(409, "PoolBeingDeleted", "The specified pool has been marked for deletion.")
        for key in ("startTask", "metadata", "applicationPackageReferences", "targetNodeCommunicationMode"):
            if key in body:
                pool.body[key] = body[key]

    def stop_resize(self, pool_id: str) -> None:
        pool = self.pool(pool_id)
        if pool.state == "deleting":
            raise BatchError(409, "PoolBeingDeleted", "The specified pool has been marked for deletion.")
        if pool.resize is None or pool.resize.stopping:
            return  # nothing to stop
        pool.resize.stopping = True
        pool.resize.due = time.time() + self.timing.stop_resize_s
        pool.allocation_state, pool.allocation_time = "stopping", time.time()

    def remove_nodes(self, pool_id: str, body: dict[str, Any]) -> None:
        pool = self._changeable(pool_id)
        ids = list(body.get("nodeList") or [])
        if not ids or len(ids) > 100:
            raise BatchError(400, "InvalidPropertyValue", "nodeList must name 1 to 100 nodes.")
        for node_id in ids:
            node = pool.nodes.get(node_id)
            if node is None or node.removed:
                raise BatchError(404, "NodeNotFound", f"The specified node {node_id} does not exist.")
        removing = [pool.nodes[i] for i in ids]
        pool.target_dedicated -= sum(n.dedicated for n in removing)
        pool.target_low -= sum(not n.dedicated for n in removing)
        option = body.get("nodeDeallocationOption") or "requeue"
        self._begin_resize(pool, Resize(time.time() + self.timing.resize_s, option, remove_ids=ids))

    def _begin_resize(self, pool: Pool, resize: Resize) -> None:
        pool.resize = resize
        pool.resize_errors = []
        pool.allocation_state, pool.allocation_time = "resizing", time.time()

    def delete_pool(self, pool_id: str) -> None:
        pool = self.pool(pool_id)
        if pool.state == "deleting":
            return
        pool.state, pool.state_time = "deleting", time.time()
        pool.gone_at = time.time() + self.timing.delete_s
        for node in list(pool.nodes.values()):
            self._remove_node(pool, node, "requeue")

    # --- jobs and tasks ---------------------------------------------------------------------
    def create_job(self, body: dict[str, Any]) -> None:
        job_id = body.get("id") or ""
        if not job_id or not (body.get("poolInfo") or {}).get("poolId"):
            raise BatchError(400, "MissingRequiredProperty", "A job needs an id and poolInfo.poolId.")
        existing = self.jobs.get(job_id)
        if existing is not None:
            if existing.state == "deleting":
                raise BatchError(409, "JobBeingDeleted", "The specified job has been marked for deletion.")
            raise BatchError(409, "JobExists", "The specified job already exists.")
        now = time.time()
        self.jobs[job_id] = Job(job_id, body, now, state_time=now)

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise BatchError(404, "JobNotFound", "The specified job does not exist.")
        return job

    def terminate_job(self, job_id: str, reason: str | None) -> None:
        job = self.job(job_id)
        if job.state in ("completed", "terminating"):
            raise BatchError(409, "JobCompleted", "The specified job is already in a completed state.")
        if job.state == "deleting":
            raise BatchError(409, "JobBeingDeleted", "The specified job has been marked for deletion.")
        job.terminate_reason = reason or "UserTerminate"
        job.set_state("terminating")
        for task in job.tasks.values():
            self._terminate(task)

    def delete_job(self, job_id: str) -> None:
        job = self.job(job_id)
        if job.state == "deleting":
            return
        job.set_state("deleting")
        job.gone_at = time.time() + self.timing.delete_s
        for task in job.tasks.values():
            self._terminate(task)

    def add_tasks(self, job_id: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        job = self.job(job_id)
        if job.state != "active":
            code = {"completed": "JobCompleted", "terminating": "JobBeingTerminated", "deleting": "JobBeingDeleted"}
            raise BatchError(409, code.get(job.state, "JobNotActive"), f"The specified job is {job.state}.")
        if len(bodies) > 100:
            raise BatchError(400, "InvalidPropertyValue", "A task collection holds at most 100 tasks.")
        results = []
        for body in bodies:
            task_id = body.get("id") or ""
            if not task_id or not body.get("commandLine"):
                error = _error("MissingRequiredProperty", "A task needs an id and a commandLine.")
                results.append({"status": "clienterror", "taskId": task_id, "error": error})
            elif task_id in job.tasks:
                error = _error("TaskExists", "The specified task already exists.")
                results.append({"status": "clienterror", "taskId": task_id, "error": error})
            else:
                now = time.time()
                job.tasks[task_id] = Task(job_id, task_id, body, now, state_time=now)
                url = f"{self.url}/jobs/{job_id}/tasks/{task_id}"
                results.append({"status": "success", "taskId": task_id, "eTag": etag(now), "location": url})
        return results

    def task(self, job_id: str, task_id: str) -> Task:
        task = self.job(job_id).tasks.get(task_id)
        if task is None:
            raise BatchError(404, "TaskNotFound", "The specified task does not exist.")
        return task

    def terminate_task(self, job_id: str, task_id: str) -> None:
        task = self.task(job_id, task_id)
        if task.state == "completed":
            raise BatchError(409, "TaskCompleted", "The specified task is already in a completed state.")
        self._terminate(task)

    def _terminate(self, task: Task) -> None:
        """SIGTERM a running task's process group (SIGKILL after the grace); end a waiting one."""
        if task.state == "completed":
            return
        task.terminated = True
        if task.proc is not None:
            if task.proc.kill_at is None:
                task.proc.kill_at = time.time() + self.timing.terminate_grace_s
                signal_group(task.proc.popen, signal.SIGTERM)
            return
        self._complete(task, None, Failure("usererror", "TaskEnded", "Task Was Ended by User Request"))

    # --- test control ------------------------------------------------------------------------
    def announce_preemption(self, pool_id: str, node_id: str, notice_s: float) -> None:
        """A Scheduled Events `Preempt` notice naming the node's VM; the preemption follows after `notice_s`."""
        node = self._spot_node(pool_id, node_id)
        not_before = time.time() + notice_s
        self.events.append(
            scheduled_event(
                f"emulated-{node_id}-{self.incarnation + 1}", [node_id], not_before, "The Spot VM is being evicted"
            )
        )
        self.incarnation += 1
        node.preempt_at = not_before

    def preempt(self, pool_id: str, node_id: str) -> None:
        node = self._spot_node(pool_id, node_id)
        node.preempt_at = None
        if any(node_id in e["Resources"] for e in self.events):
            self.events = [e for e in self.events if node_id not in e["Resources"]]
            self.incarnation += 1
        self._kill(node.start_proc)
        node.start_proc = None
        if node.task is not None:
            self._kill(node.task.proc)
            self._requeue(node.task)
            node.task = None
        node.preempted_at = time.time()
        node.set_state("preempted")

    def _spot_node(self, pool_id: str, node_id: str) -> Node:
        node = self.pool(pool_id).nodes.get(node_id)
        if node is None or node.removed:
            raise KeyError(f"no node {node_id} in pool {pool_id}")
        if node.dedicated:
            raise ValueError(f"{node_id} is a dedicated node: Batch preempts Spot nodes only")
        return node

    def node_of_group(self, group: int) -> str | None:
        """The node one of whose processes leads process group `group`."""
        for pool in self.pools.values():
            for node in pool.nodes.values():
                procs = [node.start_proc, node.task.proc if node.task else None]
                if any(p is not None and p.popen.pid == group for p in procs):
                    return node.id
        return None

    def process_groups(self) -> set[int]:
        groups = set()
        for pool in self.pools.values():
            for node in pool.nodes.values():
                for proc in (node.start_proc, node.task.proc if node.task else None):
                    if proc is not None:
                        groups.add(proc.popen.pid)
        return groups

    # --- time -------------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.time()
        self._orphans = [p for p in self._orphans if p.poll() is None]
        for pool in list(self.pools.values()):
            for node in list(pool.nodes.values()):
                self._advance_node(pool, node, now)
            self._advance_resize(pool, now)
            if pool.gone_at is not None and now >= pool.gone_at and not self._busy(pool):
                del self.pools[pool.id]
        for job in list(self.jobs.values()):
            self._advance_job(job, now)
        self._schedule()

    def _busy(self, pool: Pool) -> bool:
        return any(n.start_proc or (n.task and n.task.proc) or n.preparing for n in pool.nodes.values())

    def _advance_resize(self, pool: Pool, now: float) -> None:
        resize = pool.resize
        if resize is None or pool.state == "deleting":
            return
        if resize.stopping:
            if now >= resize.due:
                for node in pool.nodes.values():
                    if node.leaving in ("taskcompletion", "retaineddata") and not node.removed:
                        node.leaving = None  # not gone yet: it stays
                        node.set_state("running" if node.task else "idle")
                if pool.counts() != (pool.target_dedicated, pool.target_low):
                    pool.resize_errors = [
                        _resize_error("ResizeStopped", "The resize of the pool was stopped by a stop resize request")
                    ]
                pool.target_dedicated, pool.target_low = pool.counts()
                self._settle(pool)
            return
        if not resize.applied and now >= resize.due:
            resize.applied = True
            if resize.remove_ids is not None:
                for node_id in resize.remove_ids:
                    if node_id in pool.nodes:  # (a preempted node may have been replaced meanwhile)
                        self._remove_node(pool, pool.nodes[node_id], resize.deallocation)
            else:
                self._reach_target(pool, resize.deallocation)
        if resize.applied and not any(n.leaving and not n.removed for n in pool.nodes.values()):
            self._settle(pool)

    def _settle(self, pool: Pool) -> None:
        pool.resize = None
        pool.allocation_state, pool.allocation_time = "steady", time.time()

    def _reach_target(self, pool: Pool, deallocation: str) -> None:
        for dedicated, target in ((True, pool.target_dedicated), (False, pool.target_low)):
            live = [n for n in pool.nodes.values() if n.dedicated == dedicated and not n.removed and not n.leaving]
            refusal = self.refusals.get(dedicated)
            if refusal is not None and target > len(live):
                pool.resize_errors.append(_resize_error(*refusal))  # steady below its target, as on Batch
                continue
            for _ in range(target - len(live)):
                self._add_node(pool, dedicated)
            # Batch chooses which nodes go: those doing nothing first, then the newest.
            surplus = sorted(live, key=lambda n: (n.task is not None, -n.created))[: max(0, len(live) - target)]
            for node in surplus:
                self._remove_node(pool, node, deallocation)

    def _add_node(self, pool: Pool, dedicated: bool) -> None:
        number = next(self._node_numbers)
        node_id = f"tvmps_{number:04d}_{'d' if dedicated else 'p'}"
        host = NodeHost(self.root / "nodes" / pool.id / node_id, node_id)
        now = time.time()
        node = Node(
            node_id, pool.id, dedicated, host, now, state_time=now, ip=f"10.0.{number // 250}.{number % 250 + 4}"
        )
        pool.nodes[node_id] = node

    def _remove_node(self, pool: Pool, node: Node, deallocation: str) -> None:
        """Take a node out per nodeDeallocationOption; it is gone once nothing runs on it."""
        if node.removed:
            return
        node.leaving = deallocation
        node.set_state("leavingpool")
        terminating = node.task is not None and node.task.proc is not None and node.task.proc.kill_at is not None
        if node.task is not None and deallocation in ("requeue", "terminate") and not terminating:
            # (a task already being terminated keeps its grace: the node leaves once it has ended)
            task = node.task
            self._kill(task.proc)
            node.task = None
            if deallocation == "requeue" and not task.terminated:  # a terminated task stays ended
                self._requeue(task)
            else:
                self._complete(task, None, Failure("usererror", "TaskEnded", "The node was removed from the pool"))
        if node.task is None:
            self._drop(pool, node)

    def _drop(self, pool: Pool, node: Node) -> None:
        self._kill(node.start_proc)
        node.start_proc = None
        node.removed = True
        pool.nodes.pop(node.id, None)

    def _advance_node(self, pool: Pool, node: Node, now: float) -> None:
        if node.preempt_at is not None and now >= node.preempt_at and node.state != "preempted":
            self.preempt(pool.id, node.id)
        if node.state == "preempted":
            if (
                self.timing.replace_preempted_s is not None
                and now - (node.preempted_at or now) >= self.timing.replace_preempted_s
            ):
                node.removed = True
                pool.nodes.pop(node.id, None)
                if pool.state == "active":
                    self._add_node(pool, node.dedicated)
            return
        if node.state == "creating" and now - node.created >= self.timing.boot_s:
            node.set_state("starting")
            self._begin_start_task(pool, node)
        if node.start_proc is not None and node.start_proc.popen.poll() is not None:
            self._start_task_exited(pool, node, node.start_proc.popen.returncode)
        task = node.task
        if task is not None and task.proc is not None:
            code = task.proc.popen.poll()
            if code is None and task.proc.kill_at is not None and now >= task.proc.kill_at:
                signal_group(task.proc.popen, signal.SIGKILL)
            elif code is not None:
                self._task_exited(pool, node, task, code)

    # --- the start task ---------------------------------------------------------------------
    def _begin_start_task(self, pool: Pool, node: Node) -> None:
        start = pool.start_task
        if not start:
            node.set_state("idle")
            return
        node.start = StartTaskRun(start_time=time.time(), retry_count=node.start.retry_count + 1 if node.start else 0)
        if start.get("waitForSuccess", True):
            node.set_state("waitingforstarttask")
        else:
            node.set_state("idle")
        node.preparing = True
        thread = threading.Thread(target=self._run_start_task, args=(pool, node, start), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run_start_task(self, pool: Pool, node: Node, start: dict[str, Any]) -> None:
        """Download the resource files (slow: outside the lock), then start the process."""
        working_dir = node.host.startup_dir / "wd"
        failure = node.host.download(start.get("resourceFiles") or [], working_dir)
        with self.lock:
            node.preparing = False
            if node.removed or node.state == "preempted":
                return
            if failure is not None:
                self._start_task_failed(pool, node, None, failure)
                return
            env = self._env(pool, node, start, node.host.startup_dir, None)
            try:
                popen = node.host.spawn(start["commandLine"], node.host.startup_dir, env)
            except (OSError, ValueError) as exc:
                failure = Failure("usererror", "CommandProgramNotFound", f"{start['commandLine'].split()[0]}: {exc}")
                self._start_task_failed(pool, node, None, failure)
                return
            node.start_proc = Proc(popen)
            self.groups.add(popen.pid)

    def _start_task_exited(self, pool: Pool, node: Node, code: int) -> None:
        node.start_proc = None
        if code == 0:
            assert node.start is not None
            node.start.state, node.start.end_time, node.start.exit_code = "completed", time.time(), 0
            node.start_history.append(node.start)
            if node.state == "waitingforstarttask":
                node.set_state("idle")
            return
        failure = Failure("usererror", "FailureExitCode", "The task process exited with an unexpected exit code")
        self._start_task_failed(pool, node, code, failure)

    def _start_task_failed(self, pool: Pool, node: Node, code: int | None, failure: Failure) -> None:
        start = pool.start_task or {}
        run = node.start
        assert run is not None
        node.start_history.append(
            StartTaskRun("completed", run.start_time, time.time(), code, failure, run.retry_count, _stderr(node))
        )
        if run.retry_count < int(start.get("maxTaskRetryCount", 0) or 0):
            self._begin_start_task(pool, node)  # the next try counts one more retry
            return
        run.state, run.end_time, run.exit_code, run.failure = "completed", time.time(), code, failure
        if start.get("waitForSuccess", True):
            node.set_state("starttaskfailed")

    # --- tasks ------------------------------------------------------------------------------
    def _schedule(self) -> None:
        for job in sorted(self.jobs.values(), key=lambda j: j.created):
            pool = self.pools.get(job.pool_id)
            if job.state != "active" or pool is None or pool.state != "active":
                continue
            waiting = sorted((t for t in job.tasks.values() if t.state == "active"), key=lambda t: t.created)
            for task in waiting:
                node = next((n for n in sorted(pool.nodes.values(), key=lambda n: n.created) if n.ready), None)
                if node is None:
                    break
                self._start(pool, job, node, task)

    def _start(self, pool: Pool, job: Job, node: Node, task: Task) -> None:
        task.node_id, task.node_root = node.id, node.host.root
        task.exit_code, task.failure, task.end_time = None, None, None
        task.start_time = time.time()
        task_dir = node.host.task_dir(job.id, task.id)
        node.task = task
        node.total_tasks_run += 1
        node.recent = [*[t for t in node.recent if t is not task][-4:], task]
        node.set_state("running")
        task.set_state("running")
        failure = None
        if task.body.get("containerSettings"):
            failure = Failure("usererror", "ContainerNotSupported", "the Batch emulator cannot run container tasks")
        elif task.body.get("resourceFiles"):
            failure = node.host.download(task.body["resourceFiles"], task_dir / "wd")
        if failure is None:
            env = self._env(pool, node, task.body, task_dir, job)
            try:
                task.proc = Proc(node.host.spawn(task.body["commandLine"], task_dir, env))
                self.groups.add(task.proc.popen.pid)
                return
            except (OSError, ValueError) as exc:
                failure = Failure("usererror", "CommandProgramNotFound", str(exc))
        node.task = None
        node.set_state("idle")
        self._complete(task, None, failure)

    def _task_exited(self, pool: Pool, node: Node, task: Task, code: int) -> None:
        task.proc = None
        node.task = None
        if code == 0:
            node.total_tasks_succeeded += 1
        if node.leaving is not None:
            self._drop(pool, node)
        elif node.state == "running":
            node.set_state("idle")
        if code != 0 and not task.terminated and task.retry_count < task.max_retries:
            task.retry_count += 1
            task.exit_code, task.end_time = code, time.time()
            task.set_state("active")
            return
        failure = None
        if task.terminated:
            failure = Failure("usererror", "TaskEnded", "Task Was Ended by User Request")
        elif code != 0:
            failure = Failure(
                "usererror", "FailureExitCode", "The task exited with an exit code representing a failure"
            )
        self._complete(task, code, failure)

    def _complete(self, task: Task, code: int | None, failure: Failure | None) -> None:
        task.exit_code, task.failure, task.end_time = code, failure, time.time()
        task.set_state("completed")

    def _requeue(self, task: Task) -> None:
        task.proc = None
        task.requeue_count += 1
        task.last_requeue = time.time()
        task.set_state("active")

    def _advance_job(self, job: Job, now: float) -> None:
        running = any(t.proc is not None for t in job.tasks.values())
        if job.state == "terminating" and not running:
            job.end_time = now
            job.set_state("completed")
        elif job.state == "deleting" and not running and job.gone_at is not None and now >= job.gone_at:
            del self.jobs[job.id]
        elif job.state == "active" and job.body.get("onAllTasksComplete") == "terminatejob" and job.tasks:
            self._complete_if_done(job, now)

    def _complete_if_done(self, job: Job, now: float) -> None:
        if all(t.state == "completed" for t in job.tasks.values()):
            job.terminate_reason = "AllTasksComplete"
            job.end_time = now
            job.set_state("completed")

    # --- environment ------------------------------------------------------------------------
    def _env(self, pool: Pool, node: Node, spec: dict[str, Any], task_dir: Path, job: Job | None) -> dict[str, str]:
        """The base environment, Batch's AZ_BATCH_* variables, then the job's and task's settings."""
        root = node.host.root
        env = dict(self.base_env)
        env.update(
            AZ_BATCH_ACCOUNT_NAME=self.name,
            AZ_BATCH_ACCOUNT_URL=self.url,
            AZ_BATCH_POOL_ID=pool.id,
            AZ_BATCH_NODE_ID=node.id,
            AZ_BATCH_NODE_IS_DEDICATED="true" if node.dedicated else "false",
            AZ_BATCH_NODE_ROOT_DIR=str(root),
            AZ_BATCH_NODE_SHARED_DIR=str(root / "shared"),
            AZ_BATCH_NODE_STARTUP_DIR=str(root / "startup"),
            AZ_BATCH_NODE_STARTUP_WORKING_DIR=str(root / "startup" / "wd"),
            AZ_BATCH_NODE_MOUNTS_DIR=str(root / "fsmounts"),
            AZ_BATCH_TASK_DIR=str(task_dir),
            AZ_BATCH_TASK_WORKING_DIR=str(task_dir / "wd"),
            AZ_BATCH_CERTIFICATES_DIR=str(task_dir / "certs"),
            AZ_BATCH_TASK_USER="_azbatch",
            AZ_BATCH_TASK_USER_IDENTITY=_user_identity(spec),
            HOME=str(root / "home"),
        )
        if job is not None:
            env.update(AZ_BATCH_JOB_ID=job.id, AZ_BATCH_TASK_ID=spec["id"])
            env.update({e["name"]: e.get("value") or "" for e in job.body.get("commonEnvironmentSettings") or []})
        env.update({e["name"]: e.get("value") or "" for e in spec.get("environmentSettings") or []})
        return env

    # --- shutdown ---------------------------------------------------------------------------
    def kill_everything(self) -> list[subprocess.Popen[bytes]]:
        """SIGKILL every process any node started; returns them, to be reaped."""
        procs = [n.start_proc for p in self.pools.values() for n in p.nodes.values()]
        procs += [t.proc for j in self.jobs.values() for t in j.tasks.values()]
        for proc in procs:
            self._kill(proc)
        for group in self.groups:  # what finished tasks left running in their groups
            if group_alive(group):
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
        killed, self._orphans = self._orphans, []
        return killed


def _resize_error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "values": []}


def _stderr(node: Node) -> str:
    path = node.host.startup_dir / "stderr.txt"
    return path.read_text(errors="replace") if path.exists() else ""


def _error(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": {"lang": "en-US", "value": message}}


def _user_identity(spec: dict[str, Any]) -> str:
    auto = (spec.get("userIdentity") or {}).get("autoUser") or {}
    scope = "PoolNonAdmin" if auto.get("scope", "pool") == "pool" else "TaskNonAdmin"
    return scope.replace("NonAdmin", "Admin") if auto.get("elevationLevel") == "admin" else scope
