"""A local HTTP server that records what the Azure SDKs send and answers with scripted responses.

The cluster backends are tested by pointing the real SDKs (azure-mgmt-batchai, azure-batch,
azure-mgmt-batch) at this server on 127.0.0.1. Every request is recorded (method, path, query,
headers without credentials, JSON body) so tests can assert on exactly what would reach Azure.

Answers come from routes: `server.route("PUT", r"/clusters/[^/]+$", reply(200, {...}))`. A
route may hold several replies, used in turn (the last one repeats), or a function of the
request, which lets the fakes below keep state (a job PUT and later a job list). Routes added
later win, so a test can script one failure over a working fake.

`FakeBatchAI` and `FakeBatch` are small stateful stand-ins for the two services, good enough for
the launch → scale → status → teardown story; tests add error routes on top of them.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

# Headers that carry credentials: never recorded, so a recording can be printed safely.
_CREDENTIAL_HEADERS = {"authorization", "ocp-date", "x-ms-date"}


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: str
    authorization: str  # the scheme only ("Bearer", "SharedKey"): proof a credential was sent


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[Recorded, "re.Match[str]"], Reply]


def reply(status: int, body: Any = None, **headers: str) -> Reply:
    return Reply(status, body, {k.replace("_", "-"): v for k, v in headers.items()})


def arm_error(status: int, code: str, message: str) -> Reply:
    """An ARM error body, as Azure Resource Manager returns it for 400/403/409."""
    return Reply(status, {"error": {"code": code, "message": message}})


def batch_error(status: int, code: str, message: str) -> Reply:
    """An Azure Batch data-plane error body (OData shape)."""
    return Reply(status, {"code": code, "message": {"lang": "en-US", "value": message}})


class _Route:
    def __init__(self, method: str, pattern: str, replies: tuple[Reply | Responder, ...]) -> None:
        self.method = method
        self.pattern = re.compile(pattern)
        self.replies = list(replies)
        self.calls = 0

    def answer(self, request: Recorded, match: re.Match[str]) -> Reply:
        item = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        return item if isinstance(item, Reply) else item(request, match)


class RecordingServer:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._routes: list[_Route] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8") if length else ""
                answer = server._dispatch(self.command, self.path, dict(self.headers.items()), raw)
                raw_bytes = isinstance(answer.body, bytes)  # a file's content, sent as it is
                payload = answer.body if raw_bytes else b"" if answer.body is None else json.dumps(answer.body).encode()
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                if payload and not raw_bytes:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> RecordingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def route(self, method: str, pattern: str, *replies: Reply | Responder) -> None:
        """Answer `method` on paths matching `pattern` (searched, so anchor with $)."""
        with self._lock:
            self._routes.append(_Route(method, pattern, replies))

    def _dispatch(self, method: str, target: str, headers: dict[str, str], raw: str) -> Reply:
        parsed = urlparse(target)
        auth = headers.get("Authorization", "") or headers.get("authorization", "")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        request = Recorded(
            method=method,
            path=parsed.path,
            query={k: v[0] for k, v in parse_qs(parsed.query).items()},
            headers={k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS},
            body=body,
            raw_body=raw,
            authorization=auth.split(" ", 1)[0],
        )
        with self._lock:
            self.requests.append(request)
            for candidate in reversed(self._routes):
                match = candidate.pattern.search(parsed.path)
                if candidate.method == method and match:
                    return candidate.answer(request, match)
        return arm_error(404, "NotScripted", f"no scripted answer for {method} {parsed.path}")

    # --- asking what was sent -------------------------------------------------------------
    def sent(self, method: str, pattern: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def everything_sent(self) -> str:
        """Every path, query, header and body sent, as one text to search for secrets."""
        return "\n".join(
            f"{r.method} {r.path} {json.dumps(r.query)} {json.dumps(r.headers)} {r.raw_body}" for r in self.requests
        )


@contextmanager
def recording_server() -> Iterator[RecordingServer]:
    server = RecordingServer().start()
    try:
        yield server
    finally:
        server.stop()


# --- Batch AI (ARM, api-version 2018-05-01) ------------------------------------------------
_WS = (
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.BatchAI/workspaces/(?P<ws>[^/]+)"
)


class FakeBatchAI:
    """Workspaces, experiments, clusters and jobs kept in dicts; every create succeeds at once.

    A cluster's `currentNodeCount` follows its target, so status reads as a steady cluster.
    """

    def __init__(self, server: RecordingServer) -> None:
        self.server = server
        self.workspaces: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.clusters: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        s = server
        s.route("GET", _WS + "$", self._get(self.workspaces))
        s.route("PUT", _WS + "$", self._put_workspace)
        s.route("GET", _WS + r"/experiments/[^/]+$", self._get(self.experiments))
        s.route("PUT", _WS + r"/experiments/[^/]+$", self._put_simple(self.experiments))
        s.route("GET", _WS + r"/clusters/[^/]+$", self._get(self.clusters))
        s.route("PUT", _WS + r"/clusters/[^/]+$", self._put_cluster)
        s.route("PATCH", _WS + r"/clusters/[^/]+$", self._patch_cluster)
        s.route("DELETE", _WS + r"/clusters/[^/]+$", self._delete(self.clusters))
        s.route("GET", _WS + r"/experiments/[^/]+/jobs$", self._list_jobs)
        s.route("GET", _WS + r"/experiments/[^/]+/jobs/[^/]+$", self._get(self.jobs))
        s.route("PUT", _WS + r"/experiments/[^/]+/jobs/[^/]+$", self._put_job)
        s.route("POST", _WS + r"/experiments/[^/]+/jobs/[^/]+/terminate$", self._terminate_job)

    @staticmethod
    def _resource(request: Recorded, properties: dict[str, Any]) -> dict[str, Any]:
        return {"id": request.path, "name": request.path.rsplit("/", 1)[-1], "properties": properties}

    def _get(self, table: dict[str, dict[str, Any]]) -> Responder:
        def answer(request: Recorded, _m: re.Match[str]) -> Reply:
            if request.path in table:
                return reply(200, table[request.path])
            return arm_error(404, "ResourceNotFound", f"{request.path.rsplit('/', 1)[-1]} was not found")

        return answer

    def _delete(self, table: dict[str, dict[str, Any]]) -> Responder:
        def answer(request: Recorded, _m: re.Match[str]) -> Reply:
            table.pop(request.path, None)
            return reply(200)

        return answer

    def _put_workspace(self, request: Recorded, _m: re.Match[str]) -> Reply:
        resource = self._resource(request, {"provisioningState": "succeeded"})
        resource["location"] = request.body["location"]
        self.workspaces[request.path] = resource
        return reply(200, resource)

    def _put_simple(self, table: dict[str, dict[str, Any]]) -> Responder:
        def answer(request: Recorded, _m: re.Match[str]) -> Reply:
            table[request.path] = self._resource(request, {"provisioningState": "succeeded"})
            return reply(200, table[request.path])

        return answer

    def _put_cluster(self, request: Recorded, _m: re.Match[str]) -> Reply:
        props = dict(request.body["properties"])
        target = props["scaleSettings"]["manual"]["targetNodeCount"]
        props.update(provisioningState="succeeded", allocationState="steady", currentNodeCount=target)
        props["nodeStateCounts"] = {"idleNodeCount": 0, "runningNodeCount": target, "preparingNodeCount": 0}
        self.clusters[request.path] = self._resource(request, props)
        return reply(200, self.clusters[request.path])

    def _patch_cluster(self, request: Recorded, _m: re.Match[str]) -> Reply:
        cluster = self.clusters.get(request.path)
        if cluster is None:
            return arm_error(404, "ResourceNotFound", "cluster was not found")
        props = cluster["properties"]
        props["scaleSettings"] = request.body["properties"]["scaleSettings"]
        props["currentNodeCount"] = props["scaleSettings"]["manual"]["targetNodeCount"]
        return reply(200, cluster)

    def _list_jobs(self, request: Recorded, _m: re.Match[str]) -> Reply:
        prefix = request.path + "/"
        return reply(200, {"value": [job for path, job in self.jobs.items() if path.startswith(prefix)]})

    def _put_job(self, request: Recorded, _m: re.Match[str]) -> Reply:
        props = dict(request.body["properties"])
        props.update(provisioningState="succeeded", executionState="running")
        self.jobs[request.path] = self._resource(request, props)
        return reply(200, self.jobs[request.path])

    def _terminate_job(self, request: Recorded, _m: re.Match[str]) -> Reply:
        job = self.jobs.get(request.path.removesuffix("/terminate"))
        if job is not None:
            job["properties"]["executionState"] = "failed"
            job["properties"]["executionInfo"] = {"exitCode": 137, "errors": [{"code": "JobTerminated"}]}
        return reply(200)


# --- Azure Batch (data plane) ---------------------------------------------------------------


class FakeBatch:
    """Pools, jobs and tasks of one Batch account; pools reach their target at once."""

    def __init__(self, server: RecordingServer) -> None:
        self.server = server
        self.pools: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, dict[str, Any]]] = {}
        s = server
        s.route("POST", r"^/pools$", self._add_pool)
        s.route("GET", r"^/pools/(?P<pool>[^/]+)$", self._get_pool)
        s.route("POST", r"^/pools/(?P<pool>[^/]+)/resize$", self._resize)
        s.route("DELETE", r"^/pools/(?P<pool>[^/]+)$", self._delete_pool)
        s.route("GET", r"^/pools/(?P<pool>[^/]+)/nodes$", self._list_nodes)
        s.route("POST", r"^/jobs$", self._add_job)
        s.route("GET", r"^/jobs/(?P<job>[^/]+)$", self._get_job)
        s.route("POST", r"^/jobs/(?P<job>[^/]+)/terminate$", self._terminate_job)
        s.route("DELETE", r"^/jobs/(?P<job>[^/]+)$", self._delete_job)
        s.route("GET", r"^/jobs/(?P<job>[^/]+)/tasks$", self._list_tasks)
        s.route("POST", r"^/jobs/(?P<job>[^/]+)/addtaskcollection$", self._add_tasks)
        s.route("POST", r"^/jobs/(?P<job>[^/]+)/tasks/(?P<task>[^/]+)/terminate$", self._terminate_task)
        # The one management-plane call: a pool with a managed identity is created through ARM.
        s.route("PUT", r"/providers/Microsoft\.Batch/batchAccounts/[^/]+/pools/(?P<pool>[^/]+)$", self._put_arm_pool)

    def _put_arm_pool(self, request: Recorded, m: re.Match[str]) -> Reply:
        props = request.body["properties"]
        fixed = props["scaleSettings"]["fixedScale"]
        self.add_pool(
            {
                "id": m["pool"],
                "vmSize": props["vmSize"],
                "targetDedicatedNodes": fixed.get("targetDedicatedNodes", 0),
                "targetLowPriorityNodes": fixed.get("targetLowPriorityNodes", 0),
            }
        )
        body = dict(request.body, id=request.path, name=m["pool"])
        body["properties"] = dict(props, provisioningState="Succeeded")
        return reply(200, body)

    def _add_pool(self, request: Recorded, _m: re.Match[str]) -> Reply:
        body = request.body
        if body["id"] in self.pools:
            return batch_error(409, "PoolExists", "The specified pool already exists.")
        self.add_pool(body)
        return reply(201)

    def add_pool(self, body: dict[str, Any]) -> None:
        pool = dict(body)
        pool.update(
            state="active",
            allocationState="steady",
            currentDedicatedNodes=body.get("targetDedicatedNodes", 0),
            currentLowPriorityNodes=body.get("targetLowPriorityNodes", 0),
        )
        self.pools[body["id"]] = pool

    def _get_pool(self, _r: Recorded, m: re.Match[str]) -> Reply:
        pool = self.pools.get(m["pool"])
        if pool is None:
            return batch_error(404, "PoolNotFound", "The specified pool does not exist.")
        return reply(200, pool)

    def _resize(self, request: Recorded, m: re.Match[str]) -> Reply:
        pool = self.pools.get(m["pool"])
        if pool is None:
            return batch_error(404, "PoolNotFound", "The specified pool does not exist.")
        for key in ("targetDedicatedNodes", "targetLowPriorityNodes"):
            if key in request.body:
                pool[key] = request.body[key]
                pool[key.replace("target", "current")] = request.body[key]
        return reply(202)

    def _delete_pool(self, _r: Recorded, m: re.Match[str]) -> Reply:
        self.pools.pop(m["pool"], None)
        return reply(202)

    def _list_nodes(self, _r: Recorded, m: re.Match[str]) -> Reply:
        pool = self.pools.get(m["pool"], {})
        count = pool.get("currentDedicatedNodes", 0) + pool.get("currentLowPriorityNodes", 0)
        nodes = [{"id": f"tvm-{i:04d}", "state": "running", "isDedicated": True} for i in range(count)]
        return reply(200, {"value": nodes})

    def _add_job(self, request: Recorded, _m: re.Match[str]) -> Reply:
        if request.body["id"] in self.jobs:
            return batch_error(409, "JobExists", "The specified job already exists.")
        self.jobs[request.body["id"]] = dict(request.body, state="active")
        self.tasks[request.body["id"]] = {}
        return reply(201)

    def _get_job(self, _r: Recorded, m: re.Match[str]) -> Reply:
        job = self.jobs.get(m["job"])
        if job is None:
            return batch_error(404, "JobNotFound", "The specified job does not exist.")
        return reply(200, job)

    def _terminate_job(self, _r: Recorded, m: re.Match[str]) -> Reply:
        if m["job"] in self.jobs:
            self.jobs[m["job"]]["state"] = "completed"
            for task in self.tasks[m["job"]].values():
                task["state"] = "completed"
        return reply(202)

    def _delete_job(self, _r: Recorded, m: re.Match[str]) -> Reply:
        self.jobs.pop(m["job"], None)
        self.tasks.pop(m["job"], None)
        return reply(202)

    def _list_tasks(self, _r: Recorded, m: re.Match[str]) -> Reply:
        return reply(200, {"value": list(self.tasks.get(m["job"], {}).values())})

    def _add_tasks(self, request: Recorded, m: re.Match[str]) -> Reply:
        results = []
        for task in request.body["value"]:
            self.tasks[m["job"]][task["id"]] = dict(task, state="running")
            results.append({"status": "success", "taskId": task["id"]})
        return reply(200, {"value": results})

    def _terminate_task(self, _r: Recorded, m: re.Match[str]) -> Reply:
        task = self.tasks.get(m["job"], {}).get(m["task"])
        if task is not None:
            task["state"] = "completed"
        return reply(204)


# --- fake credentials and secrets, to prove none of them leaks --------------------------------
ACCOUNT_KEY = "c3RvcmFnZS1hY2NvdW50LWtleS1zZWNyZXQtMDAwMDAw"  # base64, like a real key
SAS_SIGNATURE = "c2FzLXNpZ25hdHVyZS1zZWNyZXQtMDA%3D"
SAS_TOKEN = f"sv=2022-11-02&ss=bq&srt=sco&sp=rwdlacup&se=2030-01-01T00%3A00%3A00Z&sig={SAS_SIGNATURE}"
CONNECTION_STRING = (
    f"DefaultEndpointsProtocol=https;AccountName=imagesacct;AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net"
)
BATCH_KEY = "YmF0Y2gtc2hhcmVkLWtleS1zZWNyZXQtMDAwMDAwMA=="
SECRETS = (ACCOUNT_KEY, SAS_SIGNATURE, SAS_TOKEN, CONNECTION_STRING, BATCH_KEY)


class FakeTokenCredential:
    """An Entra ID stand-in: hands out a static token and remembers the scopes asked for."""

    token = "fake-entra-token"

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **_kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.extend(scopes)
        return AccessToken(self.token, 4_102_444_800)  # 2100-01-01


class UnusableCredential:
    """For dry runs: any attempt to sign in fails the test."""

    def get_token(self, *scopes: str, **_kwargs: Any) -> Any:
        raise AssertionError(f"a dry run asked for a token ({scopes})")
