"""The autoscaler end to end on the local backend: real `orchestration` and `consumer` processes.

`launch --autoscale 0:3` on an empty queue starts no node; a run enqueued later brings nodes up
within seconds; the run drains with every image exactly once; the pool goes back to zero after
`--idle-s`; the autoscaler's log and `status --json` show each decision with its inputs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from consumer.tasks.base import Array
from consumer.tasks.examples import SleepTask
from orchestration.autoscale.process import log_path
from orchestration.local_state import pid_alive, state_dir
from tests.support.cli import ROOT, env_for
from tests.support.faults_pool import check_every_image_once, enqueue_run, figures_line, staged_images
from tests.support.faults_tasks import fingerprint
from tests.support.orchestration_cli import SLEEP_TASK, orchestration, pool, torn_down
from tests.support.waiting import wait_for
from workpool.pool_events import read_pool_events
from workpool.settings import Settings

pytestmark = [pytest.mark.slow]

IMAGES, BATCH = 60, 5

FAST = {
    "WORKPOOL_AUTOSCALE_INTERVAL_S": "0.5",
    "WORKPOOL_AUTOSCALE_IDLE_S": "4",
    "WORKPOOL_AUTOSCALE_COOLDOWN_S": "2",
    "WORKPOOL_AUTOSCALE_BATCHES_PER_NODE": "2",
    "WORKPOOL_EXAMPLE_SLEEP_S": "0.05",
}


class Background:
    """A CLI command running in the background, its stderr in a file."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr

    def stderr_text(self) -> str:
        return self.stderr.read_text(errors="replace")


def orchestration_process(settings: Settings, *args: str, env: dict[str, str]) -> Background:
    path = settings.home.absolute().parent / f"orchestration-{time.time_ns()}.log"
    with open(path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestration", *args],
            env=env_for(settings, **env),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return Background(proc, path)


def stop_process(background: Background) -> None:
    if background.proc.poll() is None:
        background.proc.send_signal(signal.SIGTERM)
        try:
            background.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            background.proc.kill()
            background.proc.wait()


def live_nodes(settings: Settings) -> int:
    record = pool(settings)
    return len([n for n in record.nodes if n.state == "running"]) if record else 0


def status_json(settings: Settings, env: dict[str, str]) -> dict[str, object]:
    out = orchestration(settings, "status", "--json", env=env)
    assert out.code == 0, out.stderr
    data: dict[str, object] = out.json()
    return data


def test_launch_autoscale_from_zero_to_a_drained_run_and_back_to_zero(
    settings: Settings, backend: str, tmp_path: Path
) -> None:
    env = dict(FAST)
    with torn_down(settings, env):
        # Given `launch --autoscale 0:3` on an empty queue: no node starts
        launched = orchestration(settings, "launch", "--autoscale", "0:3", env=env)
        assert launched.code == 0, launched.stderr
        assert "autoscaler pid" in launched.stderr, launched.stderr
        # (its first decision is on record once the detached process has started and looked)
        scaler = wait_for(lambda: status_json(settings, env)["autoscaler"], timeout_s=30, what="the first decision")
        time.sleep(1)
        assert live_nodes(settings) == 0
        assert isinstance(scaler, dict) and scaler["running"] and scaler["target"] == 0
        assert (scaler["min"], scaler["max"]) == (0, 3)

        # When a run of 12 batches is enqueued: nodes come up within seconds (12 / 2 per node, max 3)
        source, names = staged_images(settings, tmp_path / "images", IMAGES)
        enqueue_run(settings, source, "auto", "--task", SLEEP_TASK, "--batch-size", str(BATCH))
        enqueued_at = time.monotonic()
        wait_for(lambda: live_nodes(settings) >= 1, timeout_s=30, what="a node to start")
        first_node_s = time.monotonic() - enqueued_at

        # Then the run drains, every image exactly once
        waited = orchestration(settings, "wait", "--run", "auto", "--json", env=env)
        assert waited.code == 0, waited.stdout + waited.stderr
        report = waited.json()
        assert report["images_ok"] == IMAGES and report["batches_poisoned"] == 0
        rows = check_every_image_once(settings, "auto", names, tmp_path / "auto.jsonl")
        assert rows.rows == rows.ok == IMAGES and rows.duplicate_rows == 0

        # And the pool goes back to zero nodes, once the queue has been empty for --idle-s (4 s)
        wait_for(lambda: (p := pool(settings)) is not None and p.target == 0 and not p.nodes, timeout_s=60,
                 what="the pool to return to zero")  # fmt: skip
        # (the decision's event and state are written once its scale call has returned)
        to_zeros = wait_for(
            lambda: [
                e for e in read_pool_events(settings, settings.queue) if e.kind == "autoscale" and e.nodes_after == 0
            ],
            timeout_s=30,
            what="the scale-to-zero event",
        )
        [to_zero] = to_zeros
        # (the record's acked_at is stamped a moment after the ack itself empties the queue)
        to_zero_s = (to_zero.at - datetime.fromisoformat(report["last_acked_at"])).total_seconds()
        assert to_zero.inputs["idle_for_s"] >= 4 and to_zero_s >= 3.9, (to_zero.inputs, to_zero_s)
        scaler = wait_for(lambda: (a := status_json(settings, env)["autoscaler"]) and a["target"] == 0 and a,
                          timeout_s=30, what="the autoscaler's state at zero")  # fmt: skip
        assert isinstance(scaler, dict) and scaler["target"] == 0
        assert scaler["reason"] == "queue empty: at --min"
        change = scaler["last_change"]
        # (from the run's size, or from fewer when its tail let nodes go first)
        assert isinstance(change, dict) and 1 <= change["from"] <= 3 and change["to"] == 0
        assert str(change["reason"]).startswith("scale to zero: queue empty for")
        pid = int(scaler["pid"])

    # The teardown stopped the autoscaler
    assert not pid_alive(pid, "autoscale")
    # Its log shows each decision with its inputs: activation on the backlog, then zero
    log = log_path(settings).read_text()
    activate = re.search(r"scaled 0 → (\d): activate: backlog (\d+) .*\| backlog=\d+ in_flight=\d+", log)
    assert activate is not None, log
    # (the first look may catch the producer mid-send: the size follows the backlog it saw)
    assert int(activate.group(1)) == min(3, -(-int(activate.group(2)) // 2)), log
    sizes = [int(to) for to in re.findall(r"scaled \d → (\d): ", log)]
    assert max(sizes) <= 3 and sizes[-1] == 0, log
    assert re.search(r"scaled \d → 0: scale to zero: queue empty for \d+ s \| backlog=0 in_flight=0", log), log
    figures_line(
        f"autoscale[{backend}]",
        images=IMAGES,
        batches=IMAGES // BATCH,
        first_node_after_enqueue_s=round(first_node_s, 1),
        to_zero_after_drain_s=round(to_zero_s, 1),
        drain_wall_s=report["drain_wall_s"],
        **rows.figures(),
    )


def test_a_deadline_asks_for_more_nodes_than_the_backlog_from_the_measured_rate(
    settings: Settings, backend: str, tmp_path: Path
) -> None:
    # Given one node scoring 30 one-second batches, and a backlog rule that alone wants 1 node
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.2"}
    source, names = staged_images(settings, tmp_path / "images", 150)
    enqueue_run(settings, source, "deadline", "--task", SLEEP_TASK, "--batch-size", "5")
    with torn_down(settings, env):
        assert orchestration(settings, "launch", "--nodes", "1", env=env).code == 0

        # When the autoscaler is asked to finish within 25 s (at ~1 batch/s per node: 2-3 nodes)
        scaler = orchestration_process(
            settings,
            "autoscale", "--min", "1", "--max", "3", "--batches-per-node", "100", "--deadline", "25s",
            "--interval-s", "0.5", "--cooldown-s", "600", env=env,
        )  # fmt: skip
        try:
            # Then it scales out from the measured rate, within --max
            grown = wait_for(lambda: (p := pool(settings)) is not None and p.target >= 2 and p, timeout_s=40,
                             what="the deadline to ask for more nodes")  # fmt: skip
            assert grown.target <= 3
            state = wait_for(lambda: (a := status_json(settings, env)["autoscaler"]) and a["target"] >= 2 and a,
                             timeout_s=10, what="status to show the decision")  # fmt: skip
            assert isinstance(state, dict)
            change = state["last_change"]
            assert "deadline in" in change["reason"] and "batches/s per node" in change["reason"], change
            assert state["inputs"]["rate_batches_per_node_s"] > 0 and state["deadline"] is not None
            waited = orchestration(settings, "wait", "--run", "deadline", "--json", env=env)
            assert waited.code == 0, waited.stdout + waited.stderr
        finally:
            stop_process(scaler)
        log = scaler.stderr_text()
    assert re.search(
        r"scaled 1 → [23]: scale out: deadline in \d+ s: \d+ batch\(es\) at [\d.e-]+ batches/s per node", log
    ), log
    rows = check_every_image_once(settings, "deadline", names, tmp_path / "deadline.jsonl")
    assert rows.rows == rows.ok == 150 and rows.duplicate_rows == 0
    report = waited.json()
    figures_line(
        f"autoscale-deadline[{backend}]",
        batches=30,
        nodes=f"1->{grown.target}",
        reason=change["reason"].replace(" ", "_"),
        drain_wall_s=report["drain_wall_s"],
    )


LEDGER_ENV = "WORKPOOL_AUTOSCALE_LEDGER"


class StartEndTask(SleepTask):
    """`SleepTask` that appends `start <pid> <fingerprint>` before scoring a batch and `end ...`
    after, so a batch abandoned mid-score shows as a start without its end (and a second start)."""

    def predict(self, batch: Array) -> Any:
        ledger = os.environ[LEDGER_ENV]
        digest = fingerprint(batch)
        _append(ledger, f"start {os.getpid()} {digest}\n")
        outputs = super().predict(batch)
        _append(ledger, f"end {os.getpid()} {digest}\n")
        return outputs


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def test_scaling_in_mid_run_loses_nothing_and_kills_no_batch_mid_score(
    settings: Settings, backend: str, tmp_path: Path
) -> None:
    # Given an autoscaled pool (0:3, two batches per node) scoring 13 slow batches (~2 s each): the
    # last one alone in flight at the end
    ledger = tmp_path / "ledger.txt"
    env = {
        **FAST,
        "WORKPOOL_AUTOSCALE_COOLDOWN_S": "1",
        "WORKPOOL_EXAMPLE_SLEEP_S": "0.5",
        LEDGER_ENV: str(ledger),
        "WORKPOOL_VISIBILITY_TIMEOUT_S": "60",
    }
    source, names = staged_images(settings, tmp_path / "images", 52)
    with torn_down(settings, env):
        assert orchestration(settings, "launch", "--autoscale", "0:3", env=env).code == 0
        enqueue_run(settings, source, "scalein", "--task", f"{__name__}:StartEndTask", "--batch-size", "4")

        # When the backlog runs out: the autoscaler scales in while batches are still in flight
        waited = orchestration(settings, "wait", "--run", "scalein", "--json", env=env)
        assert waited.code == 0, waited.stdout + waited.stderr
        report = waited.json()
        wait_for(lambda: (p := pool(settings)) is not None and p.target == 0 and not p.nodes, timeout_s=60,
                 what="the pool to return to zero")  # fmt: skip

    last_ack = datetime.fromisoformat(report["last_acked_at"])
    events = [e for e in read_pool_events(settings, settings.queue) if e.kind == "autoscale"]
    mid_run = [e for e in events if 0 < (e.nodes_after or 0) < (e.nodes_before or 0) and e.at < last_ack]
    assert mid_run, f"a scale-in happened mid-run: {[(e.nodes_before, e.nodes_after, e.reason) for e in events]}"
    # (each such scale-in kept at least as many nodes as batches in flight)
    assert all((e.nodes_after or 0) >= min(e.nodes_before or 0, e.inputs["in_flight"]) for e in mid_run)

    # Then every batch was scored exactly once, start to end: none abandoned mid-score
    lines = [line.split() for line in ledger.read_text().splitlines()]
    starts = Counter(digest for kind, _, digest in lines if kind == "start")
    ends = Counter(digest for kind, _, digest in lines if kind == "end")
    assert len(starts) == 13 and set(starts.values()) == {1}, starts
    assert starts == ends
    # and the nodes it stopped exited on their own (SIGTERM, exit 0), none killed by the supervisor
    supervisor = (state_dir(settings) / "logs" / "supervisor.log").read_text()
    assert "did not stop within" not in supervisor
    assert re.findall(r"stopped \(exit 0\)", supervisor)
    # and nothing was lost: every image has exactly one row
    rows = check_every_image_once(settings, "scalein", names, tmp_path / "scalein.jsonl")
    assert rows.rows == rows.ok == 52 and rows.duplicate_rows == 0
    finished = sum(len(re.findall(r"finishing the batch in hand", p.read_text()))
                   for p in (state_dir(settings) / "logs").glob("*-node-*.log"))  # fmt: skip
    figures_line(
        f"autoscale-scale-in[{backend}]",
        batches=13,
        scale_ins_mid_run=len(mid_run),
        sizes="->".join(str(e.nodes_after) for e in events),
        nodes_that_finished_their_batch=finished,
        scored_once=len(starts),
        **rows.figures(),
    )


def test_nodes_the_autoscaler_stops_mid_score_finish_their_batch_first(
    settings: Settings, backend: str, tmp_path: Path
) -> None:
    # Given an autoscaled pool of three nodes, each scoring a slow batch (~3 s)
    ledger = tmp_path / "ledger.txt"
    env = {**FAST, "WORKPOOL_EXAMPLE_SLEEP_S": "0.75", LEDGER_ENV: str(ledger), "WORKPOOL_VISIBILITY_TIMEOUT_S": "60"}
    source, names = staged_images(settings, tmp_path / "images", 48)
    with torn_down(settings, env):
        assert orchestration(settings, "launch", "--autoscale", "0:3", env=env).code == 0
        enqueue_run(settings, source, "capped", "--task", f"{__name__}:StartEndTask", "--batch-size", "4")
        wait_for(lambda: live_nodes(settings) == 3, timeout_s=30, what="three nodes")
        scoring = lambda: {pid for kind, pid, _ in _ledger(ledger) if kind == "start"}  # noqa: E731
        wait_for(lambda: len(scoring()) == 3, timeout_s=30, what="all three nodes scoring")

        # When the autoscaler is replaced by one whose --max is 1 (a cap overrides the batches in flight)
        # (its state is written once its scale call has returned and its event is recorded)
        wait_for(lambda: isinstance(status_json(settings, env)["autoscaler"], dict), timeout_s=30,
                 what="the autoscaler's state")  # fmt: skip
        detached = status_json(settings, env)["autoscaler"]
        assert isinstance(detached, dict)
        os.kill(int(detached["pid"]), signal.SIGTERM)
        wait_for(lambda: not pid_alive(int(detached["pid"]), "autoscale"), timeout_s=30, what="the autoscaler to stop")
        capped = orchestration_process(settings, "autoscale", "--min", "0", "--max", "1", "--interval-s", "0.5",
                                       "--idle-s", "2", env=env)  # fmt: skip
        try:
            wait_for(lambda: (p := pool(settings)) is not None and p.target == 1 and len(p.nodes) == 1,
                     timeout_s=60, what="two nodes to stop")  # fmt: skip
            # Then the run still completes
            waited = orchestration(settings, "wait", "--run", "capped", "--json", env=env)
            assert waited.code == 0, waited.stdout + waited.stderr
        finally:
            stop_process(capped)

    logs = state_dir(settings) / "logs"
    stopped = [p for p in logs.glob("*-node-[23].log")]
    finishing = [p.name for p in stopped if "finishing the batch in hand" in p.read_text()]
    # the two stopped nodes were mid-score and finished their batch before exiting (exit 0, not killed)
    assert len(finishing) == 2, [p.read_text()[-2000:] for p in stopped]
    supervisor = (logs / "supervisor.log").read_text()
    assert "did not stop within" not in supervisor
    assert len(re.findall(r"-node-[23] stopped \(exit 0\)", supervisor)) == 2
    # and every batch was scored exactly once, start to end: none abandoned mid-score
    starts = Counter(d for kind, _, d in _ledger(ledger) if kind == "start")
    ends = Counter(d for kind, _, d in _ledger(ledger) if kind == "end")
    assert len(starts) == 12 and set(starts.values()) == {1} and starts == ends, starts
    rows = check_every_image_once(settings, "capped", names, tmp_path / "capped.jsonl")
    assert rows.rows == rows.ok == 48 and rows.duplicate_rows == 0
    figures_line(f"autoscale-cap-mid-score[{backend}]", batches=12, stopped_mid_score=len(finishing),
                 scored_once=len(starts), **rows.figures())  # fmt: skip


def _ledger(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    return [(k, pid, d) for k, pid, d in (line.split() for line in path.read_text().splitlines())]
