"""A minimal competing consumer for the multi-process queue test (run in a child process)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from workpool.queue import open_queue
from workpool.settings import load_settings


def drain(flags: dict[str, Any], out: str, start: Any, idle_s: float = 3.0, work_s: float = 0.01) -> None:
    """Receive and ack until the queue has been empty for `idle_s`; write what was acked.

    Every worker waits at `start` (a multiprocessing Barrier) so that none drains the queue
    before the others have even imported, and "works" `work_s` per message.
    """
    queue = open_queue(load_settings(**flags))
    queue.depth()  # connect before the start line
    start.wait(60)
    acked: list[str] = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < idle_s:
        messages = queue.receive(8, visibility_timeout_s=60)
        if not messages:
            time.sleep(0.05)
            continue
        for message in messages:
            time.sleep(work_s)
            queue.ack(message)
            acked.append(message.body)
        idle_since = time.monotonic()
    Path(out).write_text(json.dumps(acked))
    queue.close()
