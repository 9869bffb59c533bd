"""The HTTP face of the AML emulator: the Resource Manager routes azure-ai-ml 1.35 calls, and the
workspace data plane it reads job logs from.

Under `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/
workspaces/{ws}` (ARM, `api-version` required, a bearer token required and not checked):

    GET                                   the workspace (its discoveryUrl)
    GET|PUT|PATCH|DELETE computes/{name}  AmlCompute (PUT refused with QuotaExceeded when set)
    POST computes/{name}/listNodes        the compute's nodes and their states
    GET|PUT environments/{name}/versions/{v}
    GET jobs, GET|PUT jobs/{name}, POST jobs/{name}/cancel

and, outside ARM: `/discovery` (the workspace's service URLs), run history's
`/history/v1.0/.../runs/{id}/details` (status, error, logFiles) with `/logs/{job}/std_log.txt`,
and `/metadata/...`, the instance metadata service of the emulated nodes (Scheduled Events and
the VM's name). Errors come back in ARM's shape `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.support.aml_emulator.state import ACTIVE, AmlError, Compute, Job, Workspace
from tests.support.batch_emulator import peers
from tests.support.batch_emulator.server import Answer, Request

_WS = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices"
    r"/workspaces/(?P<ws>[^/]+)(?P<rest>/.*)?$",
    re.IGNORECASE,
)
_DETAILS = re.compile(r"^/history/v1\.0/.*/runs/(?P<job>[^/]+)/details$")


@dataclass
class Logged:
    method: str
    path: str
    status: int
    body: Any


class AmlService:
    def __init__(self, state: Workspace) -> None:
        self.state = state
        self.log: list[Logged] = []
        self.errors: list[str] = []

    def handle(self, request: Request) -> Answer:
        try:
            answer = self._route(request)
        except AmlError as exc:
            answer = Answer(exc.status, {"error": {"code": exc.code, "message": exc.message}})
        except Exception:  # the test fails on it at the end
            self.errors.append(f"{request.method} {request.path}: {traceback.format_exc()}")
            answer = Answer(500, {"error": {"code": "InternalError", "message": "emulator error"}})
        if not request.path.startswith(("/metadata/", "/logs/")):
            self.log.append(Logged(request.method, request.path, answer.status, request.body))
        return answer

    def _route(self, request: Request) -> Answer:
        path = request.path
        if path.startswith("/metadata/"):
            return self._metadata(request)
        if path == "/msi/token":
            # A managed identity token endpoint (App Service style): any resource, a made-up token.
            expires = int(time.time()) + 3600
            token = {"access_token": "emulated-token", "expires_on": str(expires), "token_type": "Bearer"}
            return Answer(200, {**token, "resource": request.query.get("resource", "")})
        if path == "/discovery":
            url = self.state.url
            return Answer(200, {k: url for k in ("api", "catalog", "experimentation", "history", "modelmanagement")})
        if path.startswith("/logs/"):
            job = self._job(path.split("/")[2])
            data = (self.state.folder(job) / "user_logs" / "std_log.txt").read_bytes()
            return Answer(200, None, {"Content-Type": "text/plain"}, data)
        if not request.headers.get("authorization", "").startswith("Bearer "):
            raise AmlError(401, "AuthenticationFailed", "a bearer token is required")
        if match := _DETAILS.match(path):
            return self._details(match.group("job"))
        match = _WS.match(path)
        if match is None:
            raise AmlError(404, "NotFound", f"no such route {path}")
        if "api-version" not in request.query:
            raise AmlError(400, "MissingApiVersionParameter", "The api-version query parameter is required.")
        base = path[: len(path) - len(match.group("rest") or "")]
        parts = [p for p in (match.group("rest") or "").split("/") if p]
        with self.state.lock:
            if not parts:
                return Answer(200, self._workspace(base, match.group("ws")))
            if parts[0] == "computes" and len(parts) >= 2:
                return self._computes(request, base, parts)
            if parts[0] == "environments" and len(parts) == 4:
                return self._environment(request, base, parts)
            if parts[0] == "jobs":
                return self._jobs(request, base, parts)
        raise AmlError(404, "NotFound", f"no such route {path}")

    # --- workspace, computes, environments -----------------------------------------------------
    def _workspace(self, base: str, name: str) -> dict[str, Any]:
        return {
            "id": base,
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces",
            "location": "westeurope",
            "properties": {"discoveryUrl": f"{self.state.url}/discovery", "provisioningState": "Succeeded"},
        }

    def _computes(self, request: Request, base: str, parts: list[str]) -> Answer:
        name = parts[1]
        compute = self.state.computes.get(name)
        if len(parts) == 3 and parts[2] == "listNodes" and request.method == "POST":
            if compute is None:
                raise AmlError(404, "ResourceNotFound", f"compute {name} not found")
            nodes = [
                {"nodeId": n.id, "nodeState": n.state, "runId": n.job, "privateIpAddress": "10.0.0.4", "port": 50000}
                for n in compute.nodes.values()
            ]
            return Answer(200, {"nodes": nodes})
        if request.method == "GET":
            if compute is None:
                raise AmlError(404, "ResourceNotFound", f"The Resource '{name}' under the workspace was not found.")
            return Answer(200, self._compute_json(base, compute))
        if request.method == "PUT":
            body = request.body or {}
            tier = str(body.get("properties", {}).get("properties", {}).get("vmPriority", "Dedicated"))
            if tier in self.state.quota_refusals:
                raise AmlError(400, "QuotaExceeded", self.state.quota_refusals[tier])
            self.state.computes[name] = Compute(name, body) if compute is None else compute
            if compute is not None:
                compute.body = body
            return Answer(200, self._compute_json(base, self.state.computes[name]))
        if request.method == "PATCH":
            if compute is None:
                raise AmlError(404, "ResourceNotFound", f"compute {name} not found")
            scale = (request.body or {}).get("properties", {}).get("scaleSettings")
            if scale:
                compute.props["scaleSettings"] = {**compute.props.get("scaleSettings", {}), **scale}
            return Answer(200, self._compute_json(base, compute))
        if request.method == "DELETE":
            if compute is not None:
                for job in self.state.jobs.values():
                    if self.state.compute_of(job) == name and job.status in ACTIVE:
                        self.state.cancel(job.name)
                del self.state.computes[name]
            return Answer(200 if compute is not None else 204)
        raise AmlError(405, "MethodNotAllowed", request.method)

    def _compute_json(self, base: str, compute: Compute) -> dict[str, Any]:
        body = dict(compute.body)
        props = dict(body.get("properties", {}))
        inner = dict(props.get("properties", {}))
        states = [n.state for n in compute.nodes.values()]
        inner["currentNodeCount"] = len(states)
        inner["nodeStateCounts"] = {
            f"{s}NodeCount": states.count(s)
            for s in ("idle", "running", "preparing", "unusable", "leaving", "preempted")
        }
        inner["allocationState"] = "Steady"
        props.update(properties=inner, provisioningState="Succeeded", computeType="AmlCompute")
        body.update(
            id=f"{base}/computes/{compute.name}",
            name=compute.name,
            type="Microsoft.MachineLearningServices/workspaces/computes",
            location=body.get("location") or "westeurope",
            properties=props,
        )
        return body

    def _environment(self, request: Request, base: str, parts: list[str]) -> Answer:
        key = f"{parts[1]}:{parts[3]}"
        if request.method == "PUT":
            self.state.environments[key] = request.body or {}
        elif key not in self.state.environments:
            raise AmlError(404, "ResourceNotFound", f"environment {key} not found")
        body = dict(self.state.environments[key])
        body.update(id=f"{base}/environments/{parts[1]}/versions/{parts[3]}", name=parts[3])
        return Answer(200, body)

    # --- jobs ----------------------------------------------------------------------------------
    def _jobs(self, request: Request, base: str, parts: list[str]) -> Answer:
        if len(parts) == 1 and request.method == "GET":
            jobs = sorted(self.state.jobs.values(), key=lambda j: j.created)
            return Answer(200, {"value": [self._job_json(base, j) for j in jobs]})
        name = parts[1]
        if len(parts) == 3 and parts[2] == "cancel" and request.method == "POST":
            self.state.cancel(name)
            return Answer(200)
        if request.method == "PUT":
            if name in self.state.jobs:
                raise AmlError(400, "UserError", f"A job with the name {name} already exists in this workspace.")
            body = request.body or {}
            env = str(body.get("properties", {}).get("environmentId", ""))
            env_key = ":".join(env.split("/environments/", 1)[-1].split("/versions/"))
            if env_key not in self.state.environments:
                raise AmlError(400, "UserError", f"environment {env} does not exist")
            self.state.jobs[name] = Job(name, body)
            return Answer(201, self._job_json(base, self.state.jobs[name]))
        if request.method == "GET":
            return Answer(200, self._job_json(base, self._job(name)))
        raise AmlError(405, "MethodNotAllowed", request.method)

    def _job(self, name: str) -> Job:
        with self.state.lock:
            job = self.state.jobs.get(name)
        if job is None:
            raise AmlError(404, "UserError", f"Job {name} not found")
        return job

    def _job_json(self, base: str, job: Job) -> dict[str, Any]:
        props = {k: v for k, v in job.props.items() if not k.startswith("emulator")}
        props["status"] = job.status
        return {
            "id": f"{base}/jobs/{job.name}",
            "name": job.name,
            "type": "Microsoft.MachineLearningServices/workspaces/jobs",
            "properties": props,
            "systemData": {"createdAt": datetime.fromtimestamp(job.created, UTC).isoformat()},
        }

    def _details(self, name: str) -> Answer:
        job = self._job(name)
        body: dict[str, Any] = {
            "runId": name,
            "status": job.status,
            "logFiles": {"user_logs/std_log.txt": f"{self.state.url}/logs/{name}/std_log.txt"},
        }
        if job.status == "Failed":
            code = job.props.get("emulatorExitCode")
            body["error"] = {"error": {"code": "UserError", "message": f"Execution failed (exit code {code})"}}
        return Answer(200, body)

    # --- the nodes' instance metadata service --------------------------------------------------
    def _metadata(self, request: Request) -> Answer:
        if request.headers.get("metadata", "").lower() != "true":
            return Answer(400, {"error": "Bad request. Required metadata header not specified"})
        if request.path == "/metadata/scheduledevents":
            with self.state.lock:
                return Answer(200, {"DocumentIncarnation": self.state.incarnation, "Events": list(self.state.events)})
        if request.path == "/metadata/instance/compute/name":
            inode = peers.socket_inode(request.client_port, request.server_port)
            with self.state.lock:
                groups = self.state.groups()
            group = peers.group_holding(inode, groups) if inode else None
            with self.state.lock:
                node = self.state.node_of_pid_group(group) if group is not None else None
            if node is None:
                return Answer(404, {"error": "Not found: the caller is no emulated node"})
            return Answer(200, None, {"Content-Type": "text/plain"}, node.encode())
        return Answer(404, {"error": "Not found"})
