"""The autoscaler's state in the result store, for `orchestration status` on any machine.

```
pools/<queue>/autoscaler.json     settings, the last decision with its inputs, a heartbeat
```

Written by the running autoscaler after every decision (and at least every interval, as a
heartbeat); `status --json` shows it as `autoscaler`. A state whose heartbeat is older than a
few intervals belongs to an autoscaler that is no longer running (`running: false`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from workpool.errors import NotFoundError, WorkpoolError
from workpool.storage import ObjectStore

log = logging.getLogger(__name__)

STALE_AFTER_INTERVALS = 5.0


def state_name(queue: str) -> str:
    return f"pools/{queue}/autoscaler.json"


def write_state(store: ObjectStore, queue: str, state: dict[str, Any]) -> None:
    """Best effort: a state that cannot be written is logged, never the reason the loop stops."""
    try:
        store.write(state_name(queue), json.dumps(state, default=str).encode("utf-8"))
    except (WorkpoolError, OSError) as exc:
        log.warning("autoscaler state of queue %s not written: %s", queue, exc)


def read_state(store: ObjectStore, queue: str, now: float | None = None) -> dict[str, Any] | None:
    """The last state written for `queue`, with `running` derived from its heartbeat; None if none."""
    try:
        data: dict[str, Any] = json.loads(store.read(state_name(queue)))
    except NotFoundError:
        return None
    except (WorkpoolError, OSError, ValueError) as exc:
        log.warning("autoscaler state of queue %s unreadable: %s", queue, exc)
        return None
    now = time.time() if now is None else now
    fresh = now - float(data.get("heartbeat_at", 0)) <= STALE_AFTER_INTERVALS * float(data.get("interval_s", 5)) + 5
    data["running"] = bool(fresh and not data.get("stopped"))
    return data
