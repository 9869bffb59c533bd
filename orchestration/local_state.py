"""The files a local pool keeps under `WORKPOOL_HOME`, shared by the supervisor and the CLI.

```
<home>/local/<queue>/target.json       {"nodes": N, "generation": G}: by launch/scale, for the supervisor
<home>/local/<queue>/supervisor.json   the supervisor's pid (written by the supervisor itself)
<home>/local/<queue>/nodes.json        every node and its state (rewritten by the supervisor)
<home>/local/<queue>/logs/<node>.log   each node's stdout and stderr; supervisor.log beside them
```

Files are replaced atomically (temp file + rename) so a reader never sees half a document.
They hold no secrets: storage credentials reach the nodes only through their environment.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workpool.settings import Settings


def state_dir(settings: Settings) -> Path:
    return (settings.home / "local" / settings.queue).absolute()


@dataclass
class NodeRecord:
    """One node slot as the supervisor last saw it."""

    id: str
    state: str  # starting | running | stopping | restarting | exited
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    last_exit: str = ""


@dataclass
class PoolRecord:
    target: int
    supervisor_pid: int
    updated_at: float
    nodes: list[NodeRecord] = field(default_factory=list)
    stopping: bool = False
    generation: int = 0  # of the target.json the supervisor last acted on

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PoolRecord:
        nodes = [NodeRecord(**n) for n in data.get("nodes", [])]
        return cls(
            target=int(data["target"]),
            supervisor_pid=int(data["supervisor_pid"]),
            updated_at=float(data["updated_at"]),
            nodes=nodes,
            stopping=bool(data.get("stopping", False)),
            generation=int(data.get("generation", 0)),
        )


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Target:
    """The wanted pool size. `generation` grows with every write, and the supervisor echoes the
    one it has acted on in `nodes.json`, so a waiter knows its own request has been seen even
    when another shell changed the size in between."""

    nodes: int
    generation: int


def read_target(directory: Path) -> Target | None:
    data = read_json(directory / "target.json")
    return None if data is None else Target(int(data["nodes"]), int(data.get("generation", 0)))


def write_target(directory: Path, nodes: int) -> int:
    """Write the wanted size; returns its generation."""
    generation = time.time_ns()
    write_json(directory / "target.json", {"nodes": nodes, "generation": generation})
    return generation


def read_pool(directory: Path) -> PoolRecord | None:
    data = read_json(directory / "nodes.json")
    return None if data is None else PoolRecord.from_json(data)


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """True when `pid` runs and is not a zombie; with `marker`, only if its command line has it.

    The marker guards against pid reuse: a pid recorded hours ago may belong to anything now.
    """
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return marker is None  # someone else's process: not ours, whatever it is
    proc = Path("/proc") / str(pid)
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat[stat.rindex(")") + 2 :].startswith("Z"):
                return False  # exited, waiting to be reaped: as good as gone
            if marker is not None:
                return marker in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            return False
    return True


SUPERVISOR_MODULE = "orchestration.supervisor"


def ready_file(directory: Path, node_id: str) -> Path:
    """Where node `node_id` marks itself past its start-up checks (workpool/processes/readiness.py)."""
    return directory / "ready" / node_id


def node_command(python: str, node_id: str, workers: str = "auto") -> list[str]:
    """How a local node runs: `consumer run` with the node's id (workers: WORKPOOL_NODE_WORKERS)."""
    return [python, "-m", "consumer", "run", "--worker-id", node_id, "--workers", workers]
