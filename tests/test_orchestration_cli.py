"""The orchestration CLI's contract at its edges: usage errors exit 2, dry runs start nothing and
show no secret, a second launch is refused, and the benchmark runs its tiers end to end.

Where no real process is needed the commands run in this process (Typer's CliRunner)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from tests.support.cli import Outcome
from tests.support.images import write_sample_images
from tests.support.orchestration_cli import SLEEP_TASK, enqueue, live_node_pids, orchestration, torn_down
from workpool.settings import Settings, load_settings


def invoke(home: Path, queue: str, *args: str) -> Outcome:
    """`orchestration ARGS` in this process, on `home` and `queue`; the logging it configured is undone."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(app, list(args), env={"WORKPOOL_HOME": str(home), "WORKPOOL_QUEUE": queue})
    finally:
        root.handlers[:], root.level = handlers, level
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr)


def test_every_command_has_help(tmp_path: Path) -> None:
    commands = ("launch", "scale", "status", "wait", "results", "benchmark", "teardown", "autoscale", "report")
    for command in (*commands, "dashboard", "logs"):
        out = invoke(tmp_path, "help", command, "--help")
        assert out.code == 0 and "Usage" in out.stdout, command
    assert "--idle-s" in invoke(tmp_path, "help", "launch", "--help").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["launch", "--nodes", "2", "--backend", "kubernetes"], "--backend 'kubernetes': expected one of"),
        (["launch"], "give --nodes N (a fixed size) or --autoscale MIN:MAX, one of them"),
        (["launch", "--nodes", "1", "--deadline", "20m"], "--deadline: autoscaler options"),
        (["launch", "--autoscale", "3"], "--autoscale: expected MIN:MAX"),
        (["scale", "--nodes", "2"], "no local pool is running for queue usage"),
        (["results", "--run", "r", "--out", "out.xlsx"], "run 'r' not found"),
        (["benchmark", "--tiers", "1,x"], "--tiers '1,x'"),
        (["benchmark", "--arch", "vgg16", "--model", "m.keras"], "give --arch or --model, not both"),
        (["wait"], "Missing option '--run'"),
        (["wait", "--run", "no-such-run"], "no-such-run"),
        (["status", "--run", "no-such-run"], "no-such-run"),
        (["report", "--run", "no-such-run"], "no-such-run"),
        (["results", "--run", "no-such-run", "--out", "out.csv"], "no-such-run"),
        (["autoscale", "--min", "0", "--max", "2", "--deadline", "someday"], "--deadline"),
    ],
)
def test_bad_usage_exits_2_with_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = invoke(tmp_path / "home", "usage", *args)
    assert out.code == 2, (out.stdout, out.stderr)
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.azurite
def test_dry_run_describes_the_nodes_and_shows_no_secret(azurite: object, tmp_path: Path) -> None:
    from tests.support.azurite import ACCOUNT_KEY, Azurite

    assert isinstance(azurite, Azurite)
    settings = load_settings(home=tmp_path / "home", queue="dry", connection_string=azurite.connection_string)
    out = orchestration(settings, "launch", "--nodes", "3", "--dry-run", "--json")
    assert out.code == 0, out.stderr
    plan = out.json()
    assert [r["path"].split(" --worker-id ")[1].split()[0].rsplit("-", 1)[1] for r in plan["requests"][1:]] == [
        "1",
        "2",
        "3",
    ]
    assert plan["requests"][0]["body"]["environment"]["AZURE_STORAGE_CONNECTION_STRING"] == "***"
    for text in (out.stdout, out.stderr, orchestration(settings, "launch", "--nodes", "1", "--dry-run").stdout):
        assert ACCOUNT_KEY not in text and ACCOUNT_KEY[:20] not in text
    assert live_node_pids(settings) == []
    assert not (tmp_path / "home" / "local").exists()


@pytest.mark.embedded
@pytest.mark.slow
def test_a_second_launch_is_refused_and_teardown_stops_every_node(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", queue="twice")
    with torn_down(settings):
        launched = orchestration(settings, "launch", "--nodes", "2", "--json")
        assert launched.code == 0, launched.stderr
        assert [n["state"] for n in launched.json()["nodes"]] == ["running", "running"]
        pids = live_node_pids(settings)
        assert len(pids) == 2

        again = orchestration(settings, "launch", "--nodes", "1")
        assert again.code == 2 and "already running" in again.stderr

        assert orchestration(settings, "teardown").code == 0
        assert live_node_pids(settings) == []
        status = orchestration(settings, "status", "--json").json()
        assert status["cluster"]["nodes"] == [] and status["queue"]["messages"] == 0

        # A torn-down pool keeps its logs until deleted
        state = tmp_path / "home" / "local" / "twice"
        assert (state / "logs" / "supervisor.log").exists()
        assert orchestration(settings, "teardown", "--delete").code == 0
        assert not state.exists()


@pytest.mark.embedded
@pytest.mark.slow
def test_benchmark_runs_each_tier_as_a_fresh_run_and_writes_table_json_and_plot(tmp_path: Path) -> None:
    settings: Settings = load_settings(home=tmp_path / "home", queue="bench")
    write_sample_images(tmp_path / "images", 24, (64, 48))
    png = tmp_path / "bench.png"
    with torn_down(settings):
        out = orchestration(
            settings,
            "benchmark", "--tiers", "1,2", "--images", "20", "--source", str(tmp_path / "images"),
            "--task", SLEEP_TASK, "--batch-size", "4", "--plot", str(png), "--json",
            env={"WORKPOOL_EXAMPLE_SLEEP_S": "0.02"},
        )  # fmt: skip
    assert out.code == 0, out.stderr
    result = out.json()
    tiers = result["tiers"]
    assert [t["nodes"] for t in tiers] == [1, 2]
    assert len({t["run_id"] for t in tiers}) == 2
    assert all(t["images"] == t["images_ok"] == 20 and t["complete"] for t in tiers)
    assert tiers[0]["speedup"] == 1.0 and tiers[0]["efficiency"] == 1.0
    assert len(tiers[0]["workers"]) == 1
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert live_node_pids(settings) == []

    # A busy queue would spoil the timings: the benchmark refuses it.
    enqueue(settings, tmp_path / "images", "busy", "--task", SLEEP_TASK)
    busy = orchestration(settings, "benchmark", "--tiers", "1", "--images", "4", "--task", SLEEP_TASK)
    assert busy.code == 2 and "holds 1 message" in busy.stderr
    assert json.loads(orchestration(settings, "status", "--json").stdout)["queue"]["messages"] == 1


@pytest.mark.embedded
@pytest.mark.faults
def test_a_node_that_cannot_start_fails_launch_with_its_log_and_leaves_nothing_running(tmp_path: Path) -> None:
    # Given a node setting every consumer refuses at start-up
    settings = load_settings(home=tmp_path / "home", queue="broken")
    with torn_down(settings):
        # When the pool is launched
        out = orchestration(settings, "launch", "--nodes", "2", env={"WORKPOOL_NODE_WORKERS": "several"})

        # Then launch fails (exit 1), quoting the node's own complaint, and tears the pool down
        assert out.code == 1
        assert "died while waiting for 2 local node(s) to start" in out.stderr
        assert "--workers: expected 'auto' or a positive number" in out.stderr
        assert live_node_pids(settings) == []
        assert orchestration(settings, "status", "--json").json()["cluster"]["nodes"] == []


@pytest.mark.embedded
@pytest.mark.faults
def test_deleting_the_pool_folder_stops_its_nodes(tmp_path: Path) -> None:
    import shutil

    from orchestration.local_state import pid_alive
    from tests.support.waiting import wait_for

    settings = load_settings(home=tmp_path / "home", queue="gone")
    with torn_down(settings):
        assert orchestration(settings, "launch", "--nodes", "2").code == 0
        pids = live_node_pids(settings)
        assert len(pids) == 2

        # When someone removes the home folder under a running pool
        shutil.rmtree(tmp_path / "home")

        # Then nothing keeps running unseen, and the folder is not recreated
        wait_for(lambda: not any(pid_alive(p) for p in pids), timeout_s=40, what="the nodes to stop")
        assert not (tmp_path / "home" / "local").exists()


@pytest.mark.embedded
@pytest.mark.faults
def test_the_supervisor_backs_off_a_node_that_keeps_failing_at_start_up(tmp_path: Path) -> None:
    import subprocess
    import sys

    from orchestration.backends.local import LocalLauncher
    from orchestration.local_state import read_pool, state_dir, write_target
    from tests.support.waiting import wait_for
    from workpool.handoff import child_env

    # Given a supervisor started by hand (no `launch`, which would give up at the first failure)
    # for nodes that exit at once on a setting they refuse
    settings = load_settings(home=tmp_path / "home", queue="loop")
    directory = state_dir(settings)
    write_target(directory, 1)
    (directory / "logs").mkdir()
    env = child_env(settings) | {"WORKPOOL_NODE_WORKERS": "none"}
    with (directory / "logs" / "supervisor.log").open("ab") as log_file:
        subprocess.run(
            [sys.executable, "-m", "orchestration.supervisor", str(directory)],
            env=env,
            stdout=log_file,
            stderr=log_file,
            check=True,
        )

    def restarts() -> int:
        pool = read_pool(directory)
        return pool.nodes[0].restarts if pool and pool.nodes else 0

    try:
        # Then it keeps restarting the node: at once after the first quick exit, then after a
        # jittered pause under a ceiling that doubles (2 s, 4 s, ...: workpool/retry.py's Backoff)
        wait_for(lambda: restarts() >= 2, timeout_s=30, what="two restarts")
        log = (directory / "logs" / "supervisor.log").read_text()
        assert "died (exit 2)" in log
        pauses = [float(p) for p in re.findall(r"respawning in (\d+\.\d) s", log)]
        assert pauses[0] == 0.0 and 0.0 <= pauses[1] <= 2.0, pauses
        pool = read_pool(directory)
        assert pool is not None and pool.nodes[0].last_exit == "exit 2"
    finally:
        LocalLauncher(settings).teardown()


@pytest.mark.embedded
@pytest.mark.slow
def test_the_demo_runs_the_main_job_end_to_end(tmp_path: Path) -> None:
    import csv
    import subprocess
    import sys

    from tests.support.cli import ROOT, env_for

    # `make demo` on a fresh home: sample images, a random-weight model, two nodes, drain, CSV
    settings = load_settings(home=tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-m", "orchestration.tools.demo"],
        env=env_for(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "drain wall time" in done.stdout and "96 ok, 0 failed" in done.stdout
    [csv_path] = (tmp_path / "home" / "demo").glob("results-demo-*.csv")
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 96 and {r["status"] for r in rows} == {"ok"}
    assert all(r["top_label"] and float(r["top_score"]) > 0 for r in rows)
    assert live_node_pids(settings) == []
