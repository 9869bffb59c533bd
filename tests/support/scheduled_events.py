"""A local stand-in for one VM's instance metadata service: Scheduled Events and the VM's name.

It serves the documents Azure serves (`GET /metadata/scheduledevents?api-version=…`, header
`Metadata: true` required, else 400 as the real service answers), and the VM's own name
(`GET /metadata/instance/compute/name?…&format=text`). A test announces an eviction with
`announce("Preempt")`, and learns when a consumer first read it (`first_served_at`).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


def scheduled_event(
    event_id: str, resources: list[str], not_before: float, description: str, event_type: str = "Preempt"
) -> dict[str, Any]:
    """One Scheduled Events record as Azure's metadata service serves it (`not_before`: epoch seconds)."""
    return {
        "EventId": event_id,
        "EventType": event_type,
        "ResourceType": "VirtualMachine",
        "Resources": resources,
        "EventStatus": "Scheduled",
        "NotBefore": formatdate(not_before, usegmt=True),
        "Description": description,
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }


class ScheduledEventsServer:
    def __init__(self, vm_name: str) -> None:
        self.vm_name = vm_name
        self.incarnation = 1
        self.events: list[dict[str, Any]] = []
        self.first_served_at: dict[str, float] = {}  # event id → time.monotonic() of its first GET
        self.requests: list[tuple[str, str | None]] = []  # (path, Metadata header)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/metadata/scheduledevents?api-version=2020-07-01"

    def start(self) -> ScheduledEventsServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scheduled-events", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- what the document says ------------------------------------------------------------
    def announce(self, event_type: str = "Preempt", resources: list[str] | None = None) -> str:
        """Add an event (for this VM unless `resources` says otherwise); returns its id."""
        event_id = str(uuid.uuid4()).upper()
        event = scheduled_event(
            event_id,
            [self.vm_name] if resources is None else resources,
            time.time() + 30,
            "Virtual machine is being preempted." if event_type == "Preempt" else "",
            event_type,
        )
        with self._lock:
            self.events.append(event)
            self.incarnation += 1
        return event_id

    def clear(self) -> None:
        with self._lock:
            self.events = []
            self.incarnation += 1

    def document(self) -> dict[str, Any]:
        with self._lock:
            return {"DocumentIncarnation": self.incarnation, "Events": [dict(e) for e in self.events]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                server.requests.append((path, self.headers.get("Metadata")))
                if self.headers.get("Metadata") != "true":
                    self._send(400, b'{"error": "Bad request. Required metadata header not specified"}')
                elif path == "/metadata/scheduledevents":
                    doc = server.document()
                    now = time.monotonic()
                    for event in doc["Events"]:
                        server.first_served_at.setdefault(event["EventId"], now)
                    self._send(200, json.dumps(doc).encode())
                elif path == "/metadata/instance/compute/name":
                    self._send(200, server.vm_name.encode(), "text/plain")
                else:
                    self._send(404, b'{"error": "Not found"}')

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
