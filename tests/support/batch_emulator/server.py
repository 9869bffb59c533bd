"""The HTTP face of the emulator: the Batch data-plane REST paths azure-batch 15 calls.

Requests must carry `api-version` and a Shared Key signature made with the account's key (the
signature is checked the way the SDK's BatchSharedKeyAuthPolicy computes it: 403
AuthenticationFailed otherwise). Errors come back in Batch's OData shape
`{"code": ..., "message": {"lang": "en-US", "value": ...}}`, which the SDK turns into
HttpResponseError / ResourceNotFoundError / ResourceExistsError.

Supported: pools (add, list, get, exists, update, delete, resize, stopresize, removenodes),
nodes (list, get, files: get and properties), jobs (add, list, get, terminate, delete), tasks
(add, addtaskcollection, list, get, terminate, delete, files). `/metadata/scheduledevents`
stands in for the instance metadata service (Scheduled Events, the VM's name). `$filter`
understands `<prop> eq '<value>'` clauses joined by `and` or `or` over top-level properties;
anything else is a 400.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from tests.support.batch_emulator import peers, wire
from tests.support.batch_emulator.state import Account, BatchError

_SIGNED_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any
    raw_path: str = ""  # as sent (percent-encoded): what the Shared Key signature covers
    client_port: int = 0  # the caller's loopback port (which node asks the metadata service)
    server_port: int = 0


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] | None = None
    raw: bytes | None = None


@dataclass
class Logged:
    """One request as the emulator saw it, for tests: what was asked and what was answered."""

    method: str
    path: str
    status: int
    code: str | None
    body: Any


Handler = Callable[[Request, "re.Match[str]"], Answer]


class BatchService:
    """Routes requests to the account; owns authentication and the request log."""

    def __init__(self, account: Account, key: str) -> None:
        self.account = account
        self.key = key
        self.log: list[Logged] = []
        self.errors: list[str] = []  # exceptions of the emulator itself (the fixture fails on them)
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        a = self
        P = r"/pools/(?P<pool>[^/]+)"
        J = r"/jobs/(?P<job>[^/]+)"
        T = J + r"/tasks/(?P<task>[^/]+)"
        for method, pattern, handler in [
            ("POST", r"/pools", a._create_pool),
            ("GET", r"/pools", a._list_pools),
            ("GET", P, a._get_pool),
            ("HEAD", P, a._get_pool),
            ("DELETE", P, a._delete_pool),
            ("PATCH", P, a._update_pool),
            ("POST", P + r"/resize", a._resize),
            ("POST", P + r"/stopresize", a._stop_resize),
            ("POST", P + r"/removenodes", a._remove_nodes),
            ("GET", P + r"/nodes", a._list_nodes),
            ("GET", P + r"/nodes/(?P<node>[^/]+)", a._get_node),
            ("GET", P + r"/nodes/(?P<node>[^/]+)/files/(?P<file>.+)", a._node_file),
            ("HEAD", P + r"/nodes/(?P<node>[^/]+)/files/(?P<file>.+)", a._node_file),
            ("POST", r"/jobs", a._create_job),
            ("GET", r"/jobs", a._list_jobs),
            ("GET", J, a._get_job),
            ("POST", J + r"/terminate", a._terminate_job),
            ("DELETE", J, a._delete_job),
            ("POST", J + r"/addtaskcollection", a._add_tasks),
            ("POST", J + r"/tasks", a._add_task),
            ("GET", J + r"/tasks", a._list_tasks),
            ("GET", T, a._get_task),
            ("DELETE", T, a._delete_task),
            ("POST", T + r"/terminate", a._terminate_task),
            ("GET", T + r"/files/(?P<file>.+)", a._task_file),
            ("HEAD", T + r"/files/(?P<file>.+)", a._task_file),
        ]:
            self._routes.append((method, re.compile(f"^{pattern}$"), handler))

    # --- dispatch ---------------------------------------------------------------------------
    def handle(self, request: Request) -> Answer:
        if request.path.startswith("/metadata/"):
            return self._metadata(request)
        try:
            self._authenticate(request)
            if "api-version" not in request.query:
                raise BatchError(400, "MissingRequiredQueryParameter", "api-version is required.")
            for method, pattern, handler in self._routes:
                match = pattern.match(request.path)
                if match and method == request.method:
                    with self.account.lock:
                        answer = handler(request, match)
                    break
            else:
                raise BatchError(404, "InvalidUri", f"No resource at {request.method} {request.path}.")
        except BatchError as exc:
            answer = error_answer(exc)
        except Exception as exc:  # a bug of the emulator: a 500 for the client, an error for the test
            self.errors.append(f"{request.method} {request.path}: {traceback.format_exc()}")
            answer = error_answer(BatchError(500, "InternalError", f"emulator error: {exc!r}"))
        code = answer.body.get("code") if isinstance(answer.body, dict) and answer.status >= 400 else None
        self.log.append(Logged(request.method, request.path, answer.status, code, request.body))
        return answer

    def _metadata(self, request: Request) -> Answer:
        """A stand-in for the instance metadata service: Scheduled Events and the VM's name.

        Point WORKPOOL_SCHEDULED_EVENTS_URL here (`scheduled_events_url`) so the consumers on the
        emulated nodes poll this instead of this machine's own 169.254.169.254. The events list
        the preemption notices a test announced (`BatchEmulator.preempt(..., notice_s=...)`),
        naming the node's VM by its node id, which is also the name `compute/name` gives the
        node that asks (found through /proc: see peers.py).
        """
        if request.headers.get("metadata", "").lower() != "true":
            return Answer(400, {"error": "Bad request. Required metadata header not specified"})
        if request.path == "/metadata/scheduledevents":
            with self.account.lock:
                document = {"DocumentIncarnation": self.account.incarnation, "Events": list(self.account.events)}
            return Answer(200, document)
        if request.path == "/metadata/instance/compute/name":
            inode = peers.socket_inode(request.client_port, request.server_port)
            with self.account.lock:
                groups = self.account.process_groups()
            group = peers.group_holding(inode, groups) if inode else None
            with self.account.lock:
                node_id = self.account.node_of_group(group) if group is not None else None
            if node_id is None:
                return Answer(404, {"error": "Not found: the caller is no emulated node"})
            return Answer(200, None, {"Content-Type": "text/plain"}, node_id.encode())
        return Answer(404, {"error": "Not found"})

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            return  # Entra ID: the emulator trusts any token (tests of that path use the recording server)
        scheme, _, credential = header.partition(" ")
        account, _, signature = credential.partition(":")
        if scheme != "SharedKey" or account != self.account.name:
            raise BatchError(403, "AuthenticationFailed", "Server failed to authenticate the request.")
        expected = self.signature(request)
        if not hmac.compare_digest(signature, expected):
            raise BatchError(403, "AuthenticationFailed", "The MAC signature found in the request does not match.")

    def signature(self, request: Request) -> str:
        headers = dict(request.headers)
        if request.method not in ("GET", "HEAD"):
            headers.setdefault("content-length", "0")
        text = request.method + "\n" + "\n".join(headers.get(h, "") for h in _SIGNED_HEADERS) + "\n"
        for name, value in sorted((k, v) for k, v in headers.items() if "ocp-" in k and v):
            text += f"{name}:{value}\n"
        text += f"/{self.account.name}{request.raw_path}"
        for name, value in sorted(request.query.items()):
            if value:
                text += f"\n{name}:{value}"
        digest = hmac.new(base64.b64decode(self.key), text.encode(), hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    # --- pools ------------------------------------------------------------------------------
    def _create_pool(self, r: Request, _m: re.Match[str]) -> Answer:
        self.account.create_pool(_body(r))
        return _created(f"{self.account.url}/pools/{r.body['id']}")

    def _list_pools(self, r: Request, _m: re.Match[str]) -> Answer:
        pools = [wire.pool_json(self.account, p) for p in self.account.pools.values()]
        return _listing(r, pools)

    def _get_pool(self, r: Request, m: re.Match[str]) -> Answer:
        view = wire.pool_json(self.account, self.account.pool(m["pool"]))
        return Answer(200, None if r.method == "HEAD" else view, {"ETag": view["eTag"]})

    def _update_pool(self, r: Request, m: re.Match[str]) -> Answer:
        self.account.update_pool(m["pool"], _body(r))
        return Answer(200)

    def _delete_pool(self, _r: Request, m: re.Match[str]) -> Answer:
        self.account.delete_pool(m["pool"])
        return Answer(202)

    def _resize(self, r: Request, m: re.Match[str]) -> Answer:
        self.account.resize_pool(m["pool"], _body(r))
        return Answer(202)

    def _stop_resize(self, _r: Request, m: re.Match[str]) -> Answer:
        self.account.stop_resize(m["pool"])
        return Answer(202)

    def _remove_nodes(self, r: Request, m: re.Match[str]) -> Answer:
        self.account.remove_nodes(m["pool"], _body(r))
        return Answer(202)

    def _list_nodes(self, r: Request, m: re.Match[str]) -> Answer:
        pool = self.account.pool(m["pool"])
        nodes = sorted(pool.nodes.values(), key=lambda n: n.created)
        return _listing(r, [wire.node_json(self.account, pool, n) for n in nodes if not n.removed])

    def _get_node(self, _r: Request, m: re.Match[str]) -> Answer:
        pool = self.account.pool(m["pool"])
        node = pool.nodes.get(m["node"])
        if node is None:
            raise BatchError(404, "NodeNotFound", "The specified node does not exist.")
        return Answer(200, wire.node_json(self.account, pool, node))

    def _node_file(self, r: Request, m: re.Match[str]) -> Answer:
        node = self.account.pool(m["pool"]).nodes.get(m["node"])
        if node is None:
            raise BatchError(404, "NodeNotFound", "The specified node does not exist.")
        return _file(r, node.host.file(unquote(m["file"])))

    # --- jobs and tasks ---------------------------------------------------------------------
    def _create_job(self, r: Request, _m: re.Match[str]) -> Answer:
        self.account.create_job(_body(r))
        return _created(f"{self.account.url}/jobs/{r.body['id']}")

    def _list_jobs(self, r: Request, _m: re.Match[str]) -> Answer:
        return _listing(r, [wire.job_json(self.account, j) for j in self.account.jobs.values()])

    def _get_job(self, _r: Request, m: re.Match[str]) -> Answer:
        return Answer(200, wire.job_json(self.account, self.account.job(m["job"])))

    def _terminate_job(self, r: Request, m: re.Match[str]) -> Answer:
        body = r.body if isinstance(r.body, dict) else {}
        self.account.terminate_job(m["job"], body.get("terminateReason"))
        return Answer(202)

    def _delete_job(self, _r: Request, m: re.Match[str]) -> Answer:
        self.account.delete_job(m["job"])
        return Answer(202)

    def _add_tasks(self, r: Request, m: re.Match[str]) -> Answer:
        results = self.account.add_tasks(m["job"], list(_body(r).get("value") or []))
        return Answer(200, {"value": results})

    def _add_task(self, r: Request, m: re.Match[str]) -> Answer:
        (result,) = self.account.add_tasks(m["job"], [_body(r)])
        if result["status"] != "success":
            error = result["error"]
            status = 409 if error["code"] == "TaskExists" else 400
            raise BatchError(status, error["code"], error["message"]["value"])
        return _created(result["location"])

    def _list_tasks(self, r: Request, m: re.Match[str]) -> Answer:
        tasks = sorted(self.account.job(m["job"]).tasks.values(), key=lambda t: t.created)
        return _listing(r, [wire.task_json(self.account, t) for t in tasks])

    def _get_task(self, _r: Request, m: re.Match[str]) -> Answer:
        return Answer(200, wire.task_json(self.account, self.account.task(m["job"], m["task"])))

    def _terminate_task(self, _r: Request, m: re.Match[str]) -> Answer:
        self.account.terminate_task(m["job"], m["task"])
        return Answer(204)

    def _delete_task(self, _r: Request, m: re.Match[str]) -> Answer:
        task = self.account.task(m["job"], m["task"])
        self.account.terminate_task(m["job"], m["task"]) if task.state != "completed" else None
        del self.account.jobs[m["job"]].tasks[m["task"]]
        return Answer(200)

    def _task_file(self, r: Request, m: re.Match[str]) -> Answer:
        task = self.account.task(m["job"], m["task"])
        if task.node_root is None:
            raise BatchError(409, "TaskFilesUnavailable", "The files of the specified task are unavailable.")
        task_dir = task.node_root / "workitems" / task.job_id / "job-1" / task.id
        return _file(r, (task_dir / unquote(m["file"])).resolve())


# --- answers ----------------------------------------------------------------------------------
def error_answer(exc: BatchError) -> Answer:
    value = f"{exc.message}\nRequestId:00000000-0000-0000-0000-000000000000\nTime:{time.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    body = {
        "odata.metadata": "https://batch.emulated/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
        "code": exc.code,
        "message": {"lang": "en-US", "value": value},
    }
    return Answer(exc.status, body)


def _body(r: Request) -> dict[str, Any]:
    if not isinstance(r.body, dict):
        raise BatchError(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.")
    return r.body


def _created(location: str) -> Answer:
    return Answer(201, None, {"Location": location, "DataServiceId": location})


def _file(r: Request, path: Path | None) -> Answer:
    if path is None or not path.is_file():
        raise BatchError(404, "FileNotFound", "The specified file does not exist.")
    data = path.read_bytes()
    spec = r.headers.get("ocp-range", "")
    if spec.startswith("bytes="):
        first, _, last = spec[6:].partition("-")
        start = int(first) if first else max(0, len(data) - int(last or 0))
        data = data[start : int(last) + 1] if first and last else data[start:]
    stat = path.stat()
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(len(data)),
        "ocp-creation-time": formatdate(stat.st_ctime, usegmt=True),
        "Last-Modified": formatdate(stat.st_mtime, usegmt=True),
        "ocp-batch-file-isdirectory": "False",
        "ocp-batch-file-mode": oct(stat.st_mode),
        "ocp-batch-file-url": r.path,
    }
    return Answer(200, None, headers, b"" if r.method == "HEAD" else data)


def _listing(r: Request, items: list[dict[str, Any]]) -> Answer:
    return Answer(200, {"value": [i for i in items if _matches(r.query.get("$filter", ""), i)]})


_CLAUSE = re.compile(r"^\s*([A-Za-z/]+)\s+eq\s+'([^']*)'\s*$")


def _matches(text: str, item: dict[str, Any]) -> bool:
    if not text.strip():
        return True
    joiner = " or " if " or " in text else " and "
    results = []
    for clause in text.split(joiner):
        match = _CLAUSE.match(clause.strip("() "))
        if match is None:
            raise BatchError(400, "InvalidQueryParameterValue", f"the emulator cannot evaluate $filter={text!r}")
        value: Any = item
        for part in match[1].split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        results.append(str(value).lower() == match[2].lower())
    return any(results) if joiner == " or " else all(results)


# --- the HTTP server --------------------------------------------------------------------------
class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (SDK pollers, test ends) is no error; anything else is printed."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HttpFront:
    """A threading HTTP server on a free loopback port in front of a BatchService."""

    def __init__(self) -> None:
        front = self
        self.service: BatchService | None = None

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # the test output stays clean
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                parsed = urlparse(self.path)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                request = Request(
                    self.command,
                    unquote(parsed.path),
                    {k: v[0] for k, v in parse_qs(parsed.query).items()},
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    parsed.path,
                    self.client_address[1],
                    front.port,
                )
                if front.service is None:
                    raise RuntimeError("HttpFront started without a service")
                answer = front.service.handle(request)
                payload = answer.raw if answer.raw is not None else b""
                if answer.raw is None and answer.body is not None:
                    payload = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                headers = dict(answer.headers or {})
                headers.setdefault("Date", formatdate(usegmt=True))
                headers.setdefault("request-id", self.headers.get("client-request-id") or "emulated")
                if answer.raw is None and payload:
                    headers["Content-Type"] = "application/json;odata=minimalmetadata"
                if "Content-Length" not in headers:
                    headers["Content-Length"] = str(len(payload))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self._httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
