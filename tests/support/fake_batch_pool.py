"""FakeBatch with real nodes: what the Azure Batch launcher asks beyond pools, jobs and tasks.

`FakeBatchPool` extends tests/support/recording_server.FakeBatch (routes added later win) with:
- nodes `tvm-0000…` that follow the pool's target, each running at most one task (tasks get
  `nodeInfo.nodeId`; a task that finds no free node stays `active`);
- allocation that stays `resizing` for `resize_reads` reads of the pool after a resize, and a
  resize or node removal during it answered 409 (as the service does), stop-resize that makes
  it steady at once;
- remove-nodes (the ids sent are removed; their running tasks requeued), pool PATCH (start task
  replaced), and each node's `startup/stderr.txt`.

It is an in-process stand-in for request/response tests; tests/support/batch_emulator runs what
the nodes run.
"""

from __future__ import annotations

import re
from typing import Any

from tests.support.recording_server import FakeBatch, Recorded, RecordingServer, Reply, batch_error, reply


class FakeBatchPool(FakeBatch):
    def __init__(self, server: RecordingServer, resize_reads: int = 0, start_task_stderr: str | None = None) -> None:
        super().__init__(server)
        self.resize_reads = resize_reads
        self.start_task_stderr = start_task_stderr  # every new node fails its start task with it
        self.nodes: dict[str, list[dict[str, Any]]] = {}
        self.stderr: dict[str, str] = {}
        self._resizing: dict[str, int] = {}
        self.delete_reads = 0  # reads of a deleted pool that still see it `deleting`
        self._deleting: dict[str, int] = {}
        self._counter = 0
        s = server
        s.route("POST", r"^/pools$", self._add_pool_with_nodes)
        s.route("GET", r"^/pools/(?P<pool>[^/]+)$", self._get_pool_settling)
        s.route("PATCH", r"^/pools/(?P<pool>[^/]+)$", self._patch_pool)
        s.route("DELETE", r"^/pools/(?P<pool>[^/]+)$", self._delete_pool_slowly)
        s.route("POST", r"^/pools/(?P<pool>[^/]+)/resize$", self._resize_nodes)
        s.route("POST", r"^/pools/(?P<pool>[^/]+)/stopresize$", self._stop_resize)
        s.route("POST", r"^/pools/(?P<pool>[^/]+)/removenodes$", self._remove_nodes)
        s.route("GET", r"^/pools/(?P<pool>[^/]+)/nodes$", self._list_pool_nodes)
        s.route("GET", r"^/pools/(?P<pool>[^/]+)/nodes/(?P<node>[^/]+)/files/startup(/|%2F)stderr\.txt$", self._stderr)
        s.route("POST", r"^/jobs/(?P<job>[^/]+)/addtaskcollection$", self._add_tasks_on_nodes)
        s.route("POST", r"^/jobs/(?P<job>[^/]+)/tasks/(?P<task>[^/]+)/terminate$", self._terminate_on_node)
        s.route("POST", r"^/jobs/(?P<job>[^/]+)/terminate$", self._terminate_job_on_nodes)
        s.route("PUT", r"/providers/Microsoft\.Batch/batchAccounts/[^/]+/pools/(?P<pool>[^/]+)$", self._put_arm_nodes)

    # --- pools and their nodes ------------------------------------------------------------------
    def _add_pool_with_nodes(self, request: Recorded, m: re.Match[str]) -> Reply:
        if request.body["id"] in self._deleting:
            return batch_error(409, "PoolBeingDeleted", "The specified pool has been marked for deletion.")
        answer = self._add_pool(request, m)
        if answer.status == 201:
            self._follow_target(request.body["id"])
        return answer

    def _put_arm_nodes(self, request: Recorded, m: re.Match[str]) -> Reply:
        answer = self._put_arm_pool(request, m)
        self._follow_target(m["pool"])
        return answer

    def _follow_target(self, pool_id: str) -> None:
        pool = self.pools[pool_id]
        target = pool.get("targetDedicatedNodes", 0) + pool.get("targetLowPriorityNodes", 0)
        nodes = self.nodes.setdefault(pool_id, [])
        while len(nodes) < target:
            nodes.append({"id": f"tvm-{self._counter:04d}", "state": "idle", "isDedicated": True})
            self._counter += 1
            if self.start_task_stderr is not None:
                self.fail_start_task(pool_id, nodes[-1]["id"], self.start_task_stderr)
        while len(self.nodes[pool_id]) > target:
            self._drop(pool_id, self.nodes[pool_id][-1]["id"])
        pool["currentDedicatedNodes"] = len(self.nodes[pool_id])
        pool["currentLowPriorityNodes"] = 0
        self._schedule()

    def _delete_pool_slowly(self, request: Recorded, m: re.Match[str]) -> Reply:
        if m["pool"] in self.pools and self.delete_reads:
            self.pools[m["pool"]]["state"] = "deleting"
            self._deleting[m["pool"]] = self.delete_reads
            return reply(202)
        self.nodes.pop(m["pool"], None)
        return self._delete_pool(request, m)

    def _get_pool_settling(self, _r: Recorded, m: re.Match[str]) -> Reply:
        if self._deleting.get(m["pool"]) is not None:
            self._deleting[m["pool"]] -= 1
            if self._deleting[m["pool"]] < 0:
                del self._deleting[m["pool"]]
                self.pools.pop(m["pool"], None)
                self.nodes.pop(m["pool"], None)
        pool = self.pools.get(m["pool"])
        if pool is None:
            return batch_error(404, "PoolNotFound", "The specified pool does not exist.")
        left = self._resizing.get(m["pool"], 0)
        if left:
            self._resizing[m["pool"]] = left - 1
            pool["allocationState"] = "resizing"
        else:
            pool["allocationState"] = "steady"
        return reply(200, pool)

    def start_resizing(self, pool_id: str, reads: int) -> None:
        """Make the pool read as `resizing` for its next `reads` reads (a resize someone else started)."""
        self._resizing[pool_id] = reads
        self.pools[pool_id]["allocationState"] = "resizing"

    def _busy(self, pool_id: str) -> Reply | None:
        if self.pools[pool_id].get("allocationState") == "resizing" and self._resizing.get(pool_id):
            return batch_error(409, "PoolNotSteady", "The specified pool is not in a steady allocation state.")
        return None

    def _resize_nodes(self, request: Recorded, m: re.Match[str]) -> Reply:
        if m["pool"] not in self.pools:
            return batch_error(404, "PoolNotFound", "The specified pool does not exist.")
        busy = self._busy(m["pool"])
        if busy is not None:
            return busy
        pool = self.pools[m["pool"]]
        for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
            if key in request.body:
                pool[key] = request.body[key]
        self._follow_target(m["pool"])
        if self.resize_reads:
            self.start_resizing(m["pool"], self.resize_reads)
        return reply(202)

    def _stop_resize(self, _r: Recorded, m: re.Match[str]) -> Reply:
        if m["pool"] not in self.pools:
            return batch_error(404, "PoolNotFound", "The specified pool does not exist.")
        self._resizing[m["pool"]] = 0
        self.pools[m["pool"]]["allocationState"] = "steady"
        return reply(202)

    def _remove_nodes(self, request: Recorded, m: re.Match[str]) -> Reply:
        if m["pool"] not in self.pools:
            return batch_error(404, "PoolNotFound", "The specified pool does not exist.")
        busy = self._busy(m["pool"])
        if busy is not None:
            return busy
        for node_id in request.body["nodeList"]:
            self._drop(m["pool"], node_id)
        pool = self.pools[m["pool"]]
        pool["targetDedicatedNodes"] = pool["currentDedicatedNodes"] = len(self.nodes[m["pool"]])
        pool["targetLowPriorityNodes"] = 0
        self._schedule()
        return reply(202)

    def _drop(self, pool_id: str, node_id: str) -> None:
        """The node leaves; a task still running on it goes back to `active` (requeue)."""
        self.nodes[pool_id] = [n for n in self.nodes[pool_id] if n["id"] != node_id]
        for tasks in self.tasks.values():
            for task in tasks.values():
                if task.get("nodeInfo", {}).get("nodeId") == node_id and task["state"] == "running":
                    task["state"] = "active"
                    task.pop("nodeInfo")

    def _patch_pool(self, request: Recorded, m: re.Match[str]) -> Reply:
        if m["pool"] not in self.pools:
            return batch_error(404, "PoolNotFound", "The specified pool does not exist.")
        self.pools[m["pool"]].update(request.body)
        return reply(200)

    def _list_pool_nodes(self, _r: Recorded, m: re.Match[str]) -> Reply:
        return reply(200, {"value": self.nodes.get(m["pool"], [])})

    def _stderr(self, _r: Recorded, m: re.Match[str]) -> Reply:
        text = self.stderr.get(m["node"])
        if text is None:
            return batch_error(404, "FileNotFound", "The specified file does not exist.")
        return Reply(200, text.encode(), {"Content-Type": "application/octet-stream"})

    def fail_start_task(self, pool_id: str, node_id: str, stderr: str) -> None:
        """The node's start task exited 1: `starttaskfailed`, with a failure info and its stderr."""
        for node in self.nodes[pool_id]:
            if node["id"] == node_id:
                node["state"] = "starttaskfailed"
                node["startTaskInfo"] = {
                    "state": "completed",
                    "startTime": "2026-11-30T10:00:00Z",
                    "endTime": "2026-11-30T10:03:00Z",
                    "exitCode": 1,
                    "retryCount": 2,
                    "result": "failure",
                    "failureInfo": {
                        "category": "usererror",
                        "code": "FailureExitCode",
                        "message": "The task exited with an exit code representing a failure",
                    },
                }
        self.stderr[node_id] = stderr

    # --- tasks on nodes -------------------------------------------------------------------------
    def _add_tasks_on_nodes(self, request: Recorded, m: re.Match[str]) -> Reply:
        answer = self._add_tasks(request, m)
        for task in request.body["value"]:
            self.tasks[m["job"]][task["id"]]["state"] = "active"
        self._schedule()
        return answer

    def _schedule(self) -> None:
        """Each active task of an active job takes a free usable node of its pool."""
        for job_id, tasks in self.tasks.items():
            job = self.jobs.get(job_id)
            if job is None or job["state"] != "active":
                continue
            nodes = self.nodes.get(job["poolInfo"]["poolId"], [])
            for task in tasks.values():
                if task["state"] != "active":
                    continue
                busy = {t.get("nodeInfo", {}).get("nodeId") for t in tasks.values() if t["state"] == "running"}
                free = [n for n in nodes if n["id"] not in busy and n["state"] in ("idle", "running")]
                if free:
                    task["state"] = "running"
                    task["nodeInfo"] = {"nodeId": free[0]["id"], "poolId": job["poolInfo"]["poolId"]}
            busy = {t.get("nodeInfo", {}).get("nodeId") for t in tasks.values() if t["state"] == "running"}
            for node in nodes:
                if node["state"] in ("idle", "running"):
                    node["state"] = "running" if node["id"] in busy else "idle"

    def _terminate_on_node(self, request: Recorded, m: re.Match[str]) -> Reply:
        answer = self._terminate_task(request, m)
        self._schedule()
        return answer

    def _terminate_job_on_nodes(self, request: Recorded, m: re.Match[str]) -> Reply:
        answer = self._terminate_job(request, m)
        self._schedule()
        return answer

    def node_of(self, job: str, task: str) -> str | None:
        return self.tasks[job][task].get("nodeInfo", {}).get("nodeId")
