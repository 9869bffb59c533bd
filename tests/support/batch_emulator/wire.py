"""The JSON the emulated service answers with: Batch's wire shapes (camelCase, as the azure-batch
15 models name their `rest_field`s) of pools, nodes, jobs and tasks."""

from __future__ import annotations

from typing import Any

from tests.support.batch_emulator.model import Job, Node, Pool, Task, etag, now_iso
from tests.support.batch_emulator.state import Account


def pool_json(account: Account, pool: Pool) -> dict[str, Any]:
    body = pool.body
    current_dedicated, current_low = pool.counts()
    view: dict[str, Any] = {
        "id": pool.id,
        "url": f"{account.url}/pools/{pool.id}",
        "eTag": etag(pool.allocation_time),
        "lastModified": now_iso(pool.allocation_time),
        "creationTime": now_iso(pool.created),
        "state": pool.state,
        "stateTransitionTime": now_iso(pool.state_time),
        "allocationState": pool.allocation_state,
        "allocationStateTransitionTime": now_iso(pool.allocation_time),
        "vmSize": body.get("vmSize"),
        "resizeTimeout": body.get("resizeTimeout") or "PT15M",
        "currentDedicatedNodes": current_dedicated,
        "currentLowPriorityNodes": current_low,
        "targetDedicatedNodes": pool.target_dedicated,
        "targetLowPriorityNodes": pool.target_low,
        "enableAutoScale": False,
        "enableInterNodeCommunication": bool(body.get("enableInterNodeCommunication")),
        "taskSlotsPerNode": body.get("taskSlotsPerNode") or 1,
        "taskSchedulingPolicy": body.get("taskSchedulingPolicy") or {"nodeFillType": "spread"},
    }
    for key in ("displayName", "virtualMachineConfiguration", "startTask", "metadata", "networkConfiguration"):
        if body.get(key) is not None:
            view[key] = body[key]
    if pool.resize_errors and pool.allocation_state == "steady":
        view["resizeErrors"] = pool.resize_errors
    return view


def node_json(account: Account, pool: Pool, node: Node) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": node.id,
        "url": f"{account.url}/pools/{pool.id}/nodes/{node.id}",
        "state": node.state,
        "schedulingState": "enabled",
        "stateTransitionTime": now_iso(node.state_time),
        "allocationTime": now_iso(node.created),
        "lastBootTime": now_iso(node.created),
        "ipAddress": node.ip,
        "affinityId": f"TVM:{node.id}",
        "vmSize": pool.body.get("vmSize"),
        "totalTasksRun": node.total_tasks_run,
        "runningTasksCount": 1 if node.task else 0,
        "runningTaskSlotsCount": 1 if node.task else 0,
        "totalTasksSucceeded": node.total_tasks_succeeded,
        "isDedicated": node.dedicated,
        "nodeAgentInfo": {"version": "1.12.3-emulated", "lastUpdateTime": now_iso(node.created)},
        "recentTasks": [
            {
                "taskUrl": f"{account.url}/jobs/{t.job_id}/tasks/{t.id}",
                "jobId": t.job_id,
                "taskId": t.id,
                "taskState": t.state if t.node_id == node.id else "completed",
                "executionInfo": _execution(t),
            }
            for t in node.recent
        ],
    }
    if pool.start_task:
        view["startTask"] = pool.start_task
    if node.start is not None:
        run = node.start
        info: dict[str, Any] = {
            "state": run.state,
            "startTime": now_iso(run.start_time),
            "retryCount": run.retry_count,
        }
        if run.end_time is not None:
            info["endTime"] = now_iso(run.end_time)
            info["result"] = "success" if run.failure is None else "failure"
        if run.exit_code is not None:
            info["exitCode"] = run.exit_code
        if run.failure is not None:
            info["failureInfo"] = run.failure.as_json()
        view["startTaskInfo"] = info
    return view


def job_json(account: Account, job: Job) -> dict[str, Any]:
    body = job.body
    view: dict[str, Any] = {
        "id": job.id,
        "url": f"{account.url}/jobs/{job.id}",
        "eTag": etag(job.state_time),
        "lastModified": now_iso(job.state_time),
        "creationTime": now_iso(job.created),
        "state": job.state,
        "stateTransitionTime": now_iso(job.state_time),
        "priority": body.get("priority") or 0,
        "usesTaskDependencies": bool(body.get("usesTaskDependencies")),
        "constraints": body.get("constraints")
        or {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "maxTaskRetryCount": 0},
        "poolInfo": body.get("poolInfo"),
        "onAllTasksComplete": body.get("onAllTasksComplete") or "noaction",
        "onTaskFailure": body.get("onTaskFailure") or "noaction",
        "executionInfo": {"startTime": now_iso(job.created), "poolId": job.pool_id},
    }
    if job.previous_state is not None:
        view["previousState"] = job.previous_state
    for key in ("displayName", "commonEnvironmentSettings", "metadata", "jobManagerTask"):
        if body.get(key) is not None:
            view[key] = body[key]
    if job.end_time is not None:
        view["executionInfo"]["endTime"] = now_iso(job.end_time)
    if job.terminate_reason is not None:
        view["executionInfo"]["terminateReason"] = job.terminate_reason
    return view


def task_json(account: Account, task: Task) -> dict[str, Any]:
    body = task.body
    constraints = {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "retentionTime": "P7D", "maxTaskRetryCount": 0}
    constraints.update(body.get("constraints") or {})
    view: dict[str, Any] = {
        "id": task.id,
        "url": f"{account.url}/jobs/{task.job_id}/tasks/{task.id}",
        "eTag": etag(task.state_time),
        "creationTime": now_iso(task.created),
        "lastModified": now_iso(task.state_time),
        "state": task.state,
        "stateTransitionTime": now_iso(task.state_time),
        "commandLine": body.get("commandLine"),
        "constraints": constraints,
        "requiredSlots": body.get("requiredSlots") or 1,
        "userIdentity": body.get("userIdentity") or {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
        "executionInfo": _execution(task),
    }
    if task.previous_state is not None:
        view["previousState"] = task.previous_state
    for key in ("displayName", "environmentSettings", "resourceFiles", "containerSettings", "exitConditions"):
        if body.get(key) is not None:
            view[key] = body[key]
    if task.node_id is not None:
        node_url = f"{account.url}/pools/{_pool_of(account, task)}/nodes/{task.node_id}"
        view["nodeInfo"] = {
            "affinityId": f"TVM:{task.node_id}",
            "nodeUrl": node_url,
            "poolId": _pool_of(account, task),
            "nodeId": task.node_id,
            "taskRootDirectory": f"workitems/{task.job_id}/job-1/{task.id}",
            "taskRootDirectoryUrl": f"{node_url}/files/workitems/{task.job_id}/job-1/{task.id}",
        }
    return view


def _pool_of(account: Account, task: Task) -> str:
    job = account.jobs.get(task.job_id)
    return job.pool_id if job is not None else ""


def _execution(task: Task) -> dict[str, Any]:
    info: dict[str, Any] = {"retryCount": task.retry_count, "requeueCount": task.requeue_count}
    if task.start_time is not None:
        info["startTime"] = now_iso(task.start_time)
    if task.last_requeue is not None:
        info["lastRequeueTime"] = now_iso(task.last_requeue)
    if task.state == "completed":
        if task.end_time is not None:
            info["endTime"] = now_iso(task.end_time)
        if task.exit_code is not None:
            info["exitCode"] = task.exit_code
        info["result"] = "success" if task.failure is None and task.exit_code == 0 else "failure"
        if task.failure is not None:
            info["failureInfo"] = task.failure.as_json()
    return info
