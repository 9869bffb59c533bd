"""`orchestration logs` on a live local pool: real supervisor, real `consumer run` nodes.

The nodes' own lines come back with their node, filtered by --node, --run and --tail; a
secret a library printed into a node's log is redacted; --follow prints lines as they come.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from orchestration.local_state import state_dir
from tests.support.cli import ROOT, env_for
from tests.support.images import write_sample_images
from tests.support.orchestration_cli import SLEEP_TASK, enqueue, orchestration, torn_down
from tests.support.waiting import wait_for
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

pytestmark = pytest.mark.slow

LEAKY_TASK = "tests.support.leaky_task:LeakyTask"
LINE = re.compile(r"^(?P<node>\S+) \| (?P<text>.*)$")


def node_lines(stdout: str) -> list[tuple[str, str]]:
    found = [LINE.match(line) for line in stdout.splitlines()]
    assert all(found), stdout
    return [(m["node"], m["text"]) for m in found if m]


@pytest.mark.parametrize("backend", [pytest.param("azurite", marks=pytest.mark.azurite)])
def test_logs_show_each_nodes_own_lines_filtered_and_with_secrets_redacted(settings: Settings, tmp_path: Path) -> None:
    # Given two runs drained by two local nodes, one of them by a task that prints the account key
    assert settings.connection_string is not None
    secret = max(settings.secret_values(), key=len)
    write_sample_images(tmp_path / "a", 16, (32, 24))
    write_sample_images(tmp_path / "b", 8, (32, 24))
    enqueue(settings, tmp_path / "a", "first", "--task", SLEEP_TASK, "--batch-size", "2")
    enqueue(settings, tmp_path / "b", "leaky", "--task", LEAKY_TASK, "--batch-size", "2")
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.01"}
    with torn_down(settings, env):
        launched = orchestration(settings, "launch", "--nodes", "2", env=env)
        assert launched.code == 0, launched.stderr
        for run in ("first", "leaky"):
            waited = orchestration(settings, "wait", "--run", run, "--timeout-s", "120", env=env)
            assert waited.code == 0, waited.stderr
        nodes = sorted(p.stem for p in (state_dir(settings) / "logs").glob("*-node-*.log"))
        assert len(nodes) == 2
        # the secret really is in a node's log file
        assert any(secret in (state_dir(settings) / "logs" / f"{n}.log").read_text() for n in nodes)

        # When the logs are asked for
        everything = orchestration(settings, "logs", env=env)
        one = orchestration(settings, "logs", "--node", nodes[1], env=env)
        tail = orchestration(settings, "logs", "--node", nodes[0], "--tail", "3", env=env)
        first = orchestration(settings, "logs", "--run", "first", env=env)
        unknown = orchestration(settings, "logs", "--node", "nowhere-node-9", env=env)

    # Then every node's consumer lines come back, each with its node, and the secret never
    assert everything.code == 0, everything.stderr
    lines = node_lines(everything.stdout)
    assert {node for node, _ in lines} == set(nodes)
    acked = [text for _, text in lines if re.search(r"run=(first|leaky) batch=\S+ worker=", text)]
    assert len([t for t in acked if "images=2 ok=2" in t]) == 12  # 8 + 4 batches, one line each
    assert "leaky library: connecting with" in everything.stdout and "***" in everything.stdout
    for out in (everything, one, tail, first):
        assert secret not in out.stdout + out.stderr
    # --node: that node's lines only (one node: no label); --tail: its last lines
    assert one.code == 0 and one.stdout.splitlines() == [t for n, t in lines if n == nodes[1]]
    assert tail.code == 0 and tail.stdout.splitlines() == [t for n, t in lines if n == nodes[0]][-3:]
    # --run: that run's lines only
    assert first.code == 0 and all("run=first " in text for _, text in node_lines(first.stdout))
    assert len(node_lines(first.stdout)) >= 8
    # and a node that has no log is a usage error naming the ones that do
    assert unknown.code == 2 and nodes[0] in unknown.stderr


@pytest.mark.parametrize("backend", ["embedded"])
def test_follow_prints_new_lines_as_a_run_goes_and_stops_on_ctrl_c(settings: Settings, tmp_path: Path) -> None:
    write_sample_images(tmp_path / "a", 4, (32, 24))
    write_sample_images(tmp_path / "b", 6, (32, 24))
    enqueue(settings, tmp_path / "a", "before", "--task", SLEEP_TASK, "--batch-size", "2")
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.01"}
    runs = RunStore(open_result_store(settings))
    with torn_down(settings, env):
        launched = orchestration(settings, "launch", "--nodes", "1", env=env)
        assert launched.code == 0, launched.stderr
        wait_for(lambda: len(runs.record_batch_ids("before")) == 2, timeout_s=120, what="the first run")
        # Given `logs --follow --run after` running before that run exists
        follower = subprocess.Popen(
            [sys.executable, "-m", "orchestration", "logs", "--follow", "--run", "after"],
            cwd=ROOT, env=env_for(settings, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        seen: list[str] = []
        assert follower.stdout is not None
        reader = threading.Thread(target=lambda out=follower.stdout: seen.extend(out), daemon=True)
        reader.start()
        try:
            # When the run is enqueued, its lines appear as its batches are scored
            enqueue(settings, tmp_path / "b", "after", "--task", SLEEP_TASK, "--batch-size", "2")
            wait_for(
                lambda: sum("run=after batch=" in line and "images=2" in line for line in seen) == 3,
                timeout_s=120,
                what="the three batches' lines of run `after`",
            )
        finally:
            follower.send_signal(signal.SIGINT)
            _, err = follower.communicate(timeout=30)
            reader.join(timeout=10)
    # Then nothing of the earlier run was shown, and Ctrl-C ended it without an error
    assert not any("run=before" in line for line in seen)
    assert follower.returncode == 0, err
