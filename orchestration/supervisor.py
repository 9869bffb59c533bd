"""The local pool's supervisor: keeps N consumer processes running, like rq's worker pool.

`orchestration launch --backend local` starts one supervisor per queue, detached from the
terminal. Its loop:

1. reap children that exited; a node that crashed (any exit it was not asked for, SIGKILL
   included) is respawned in the same slot, with a growing pause if it keeps dying young;
2. read the target size from `target.json` (other shells change it with `orchestration scale`)
   and start nodes in the lowest free slots, or SIGTERM the highest ones, which release their
   batch and exit; one that overstays the grace period is killed;
3. write every node's state to `nodes.json` for `status`.

SIGTERM (from `teardown`) stops every node the same graceful way, then the supervisor exits.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from orchestration.local_state import NodeRecord, PoolRecord, node_command, read_target, ready_file, write_json
from workpool.processes import signals
from workpool.processes.readiness import READY_FILE_ENV
from workpool.processes.restarts import CrashLoopBackoff, describe_exit

log = logging.getLogger("orchestration.supervisor")


def slot_id(slot: int) -> str:
    # The host name keeps worker ids unique when pools on several machines share one queue.
    host = socket.gethostname().split(".")[0] or "local"
    return f"{host}-node-{slot}"


def slot_of(node_id: str) -> int:
    return int(node_id.rsplit("-", 1)[1])


class Supervisor:
    def __init__(self, directory: Path, grace_s: float = 30.0, interval_s: float = 0.2) -> None:
        self.directory = directory
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.records: dict[str, NodeRecord] = {}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, IO[bytes]] = {}
        self.kill_at: dict[str, float] = {}  # nodes asked to stop → when to SIGKILL them
        self.respawn_at: dict[str, float] = {}
        self.backoff = CrashLoopBackoff()  # a node that keeps dying young waits longer each time
        self.target = 0
        self.generation = 0
        self._gone = False  # the state folder was deleted: stop without recreating it
        self._last_written: Any = None
        self._written_at = 0.0
        self._env = self._node_env()

    @staticmethod
    def _node_env() -> dict[str, str]:
        env = dict(os.environ)
        # Pool members wait for work until the pool is torn down; a node that exited on idle
        # would only be respawned.
        env.pop("WORKPOOL_IDLE_EXIT_S", None)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # --- main loop -------------------------------------------------------------------------
    def run(self) -> None:
        signals.install()  # SIGTERM/SIGINT (teardown, Ctrl-C) only noted: the loop below reads them
        write_json(self.directory / "supervisor.json", {"pid": os.getpid(), "started_at": time.time()})
        log.info("supervisor %d watching %s", os.getpid(), self.directory)
        try:
            while signals.received() is None:
                if not self.directory.is_dir():
                    # Someone deleted the pool's folder (rm -rf .workpool, a cleaned temp dir):
                    # nobody can reach this pool any more, so it must not run on unseen.
                    log.warning("%s is gone: stopping the pool", self.directory)
                    self._gone = True
                    break
                self.reap()
                target = read_target(self.directory)
                if target is not None:
                    self.reconcile(target.nodes)
                    self.generation = target.generation
                self.write_state()
                time.sleep(self.interval_s)
        finally:
            self.shutdown()

    # --- steps -------------------------------------------------------------------------------
    def reap(self) -> None:
        now = time.time()
        for node_id, proc in list(self.children.items()):
            code = proc.poll()
            if code is None:
                if node_id in self.kill_at and now >= self.kill_at[node_id]:
                    log.warning("%s did not stop within %.0f s of SIGTERM: killing it", node_id, self.grace_s)
                    proc.kill()
                continue
            del self.children[node_id]
            self.logs.pop(node_id).close()
            record = self.records[node_id]
            how = describe_exit(code)
            if node_id in self.kill_at:
                del self.kill_at[node_id]
                del self.records[node_id]
                self.backoff.forget(node_id)  # a later node in this slot starts afresh
                log.info("%s stopped (%s)", node_id, how)
                continue
            ran_s = now - (record.started_at or now)
            delay = self.backoff.after_death(node_id, code, ran_s, log)
            record.state, record.pid, record.last_exit = "restarting", None, how
            self.respawn_at[node_id] = now + delay

    def reconcile(self, target: int) -> None:
        self.target = target
        active = sorted((i for i in self.records if i not in self.kill_at), key=slot_of)
        for node_id in active[target:]:
            self.stop_node(node_id)
        used = {slot_of(i) for i in self.records}
        slot = 1
        for _ in range(target - len(active)):
            while slot in used:
                slot += 1
            used.add(slot)
            node_id = slot_id(slot)
            self.records[node_id] = NodeRecord(id=node_id, state="starting")
            self.respawn_at[node_id] = 0.0
        now = time.time()
        for node_id, record in self.records.items():
            if (
                node_id not in self.children
                and node_id not in self.kill_at
                and self.respawn_at.get(node_id, 0.0) <= now
            ):
                self.start_node(record)

    def start_node(self, record: NodeRecord) -> None:
        logs = self.directory / "logs"
        logs.mkdir(exist_ok=True)  # not parents: a deleted pool folder must stay deleted
        out = open(logs / f"{record.id}.log", "ab")  # noqa: SIM115 - closed when the node is reaped
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {record.id}\n".encode())
        out.flush()
        # Started with SIGTERM/SIGINT held until the node's own handlers are in place: a node
        # scaled in the moment it started still stops cleanly (workpool/processes/signals.py).
        # The node marks itself ready once past its start-up checks; a restart must earn it again.
        ready = ready_file(self.directory, record.id)
        ready.parent.mkdir(exist_ok=True)
        ready.unlink(missing_ok=True)
        proc = signals.spawn_held(
            node_command(sys.executable, record.id, self._env.get("WORKPOOL_NODE_WORKERS", "auto")),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**self._env, READY_FILE_ENV: str(ready)},
        )
        if record.state == "restarting":
            record.restarts += 1
        record.state, record.pid, record.started_at = "running", proc.pid, time.time()
        self.children[record.id] = proc
        self.logs[record.id] = out
        self.respawn_at.pop(record.id, None)
        log.info("%s started (pid %d)", record.id, proc.pid)

    def stop_node(self, node_id: str) -> None:
        """SIGTERM: the consumer releases its batch and exits; no process yet means just forget it."""
        proc = self.children.get(node_id)
        if proc is None:
            self.records.pop(node_id, None)
            self.respawn_at.pop(node_id, None)
            return
        if node_id not in self.kill_at:
            proc.terminate()
            self.kill_at[node_id] = time.time() + self.grace_s
            self.records[node_id].state = "stopping"
            log.info("%s asked to stop (SIGTERM)", node_id)

    def write_state(self, stopping: bool = False) -> None:
        if self._gone:
            return
        nodes = sorted(self.records.values(), key=lambda r: slot_of(r.id))
        snapshot = (
            self.target,
            self.generation,
            stopping,
            [(n.id, n.state, n.pid, n.restarts, n.last_exit) for n in nodes],
        )
        # Rewrite on every change, and once a second as a heartbeat `status` can check.
        if snapshot == self._last_written and time.time() - self._written_at < 1.0:
            return
        record = PoolRecord(
            target=self.target,
            supervisor_pid=os.getpid(),
            updated_at=time.time(),
            nodes=nodes,
            stopping=stopping,
            generation=self.generation,
        )
        write_json(self.directory / "nodes.json", record.to_json())
        self._last_written, self._written_at = snapshot, time.time()

    def shutdown(self) -> None:
        log.info("stopping %d node(s)", len(self.children))
        for node_id in list(self.records):
            self.stop_node(node_id)
        self.write_state(stopping=True)
        while self.children:
            self.reap()
            self.write_state(stopping=True)
            time.sleep(self.interval_s)
        self.records.clear()
        self.write_state(stopping=True)
        if not self._gone:
            (self.directory / "supervisor.json").unlink(missing_ok=True)
        log.info("supervisor %d done", os.getpid())


def main(argv: list[str] | None = None) -> None:
    """`python -m orchestration.supervisor STATE_DIR [GRACE_S]`: detach, then supervise."""
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0])
    grace_s = float(args[1]) if len(args) > 1 else 30.0
    # Fork once more so the supervisor is nobody's child: the launching command may exit, or
    # (in a test) live on without ever reaping it.
    if os.fork() > 0:
        os._exit(0)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    Supervisor(directory, grace_s=grace_s).run()


if __name__ == "__main__":
    main()
