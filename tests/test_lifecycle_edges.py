"""The first hour of a new user, through the real CLIs: the rough edges of issue 21, each behaving.

In-process (typer's CliRunner) where no process is needed; real processes where the behaviour
depends on them (a live view, a command left waiting, nodes started and scaled).
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner, Result

from orchestration.cli import app as orchestration_app
from producer.cli import app as producer_app
from tests.conftest import backend_env
from tests.support.cli import run_cli
from tests.support.images import write_sample_images
from tests.support.orchestration_cli import SLEEP_TASK, enqueue, orchestration, torn_down
from tests.support.waiting import wait_for
from workpool.cli import app as workpool_app
from workpool.errors import NotFoundError
from workpool.runs import RunStore
from workpool.settings import Settings, load_settings
from workpool.storage import open_result_store

pytestmark = [pytest.mark.embedded]


def invoke(app: typer.Typer, home: Path, *args: str, **env: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"WORKPOOL_HOME": str(home), "COLUMNS": "100", **env})


def plain(text: str | bytes | bytearray) -> str:
    """Terminal output without its colour and cursor escape sequences."""
    decoded = text if isinstance(text, str) else bytes(text).decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", decoded)


def recorded(home: Path) -> list[str]:
    """The runs with a manifest in the home's result store (none before the store exists)."""
    try:
        return RunStore(open_result_store(load_settings(home=home))).list_runs()
    except NotFoundError:
        return []


def local_settings(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "home", queue="edges")


# --- doctor, enqueue's hints, --batch-size -------------------------------------------------------
def test_doctor_on_a_fresh_home_names_create_and_create_makes_it_pass(tmp_path: Path) -> None:
    fresh = invoke(workpool_app, tmp_path / "home", "doctor")
    assert fresh.exit_code == 1
    assert "does not exist" in fresh.output and "workpool doctor --create" in fresh.output
    created = invoke(workpool_app, tmp_path / "home", "doctor", "--create")
    assert created.exit_code == 0, created.output
    assert "reachable" in created.output
    assert invoke(workpool_app, tmp_path / "home", "doctor").exit_code == 0


def test_a_file_given_as_source_gets_the_at_hint_only_when_it_is_text(tmp_path: Path) -> None:
    photo = tmp_path / "photos" / "a.png"
    photo.parent.mkdir()
    Image.new("RGB", (8, 8)).save(photo)
    names = tmp_path / "names.txt"
    names.write_text("photos/a.png\n")
    blob = tmp_path / "data.bin"
    blob.write_bytes(bytes(range(256)) * 4)

    image = invoke(producer_app, tmp_path / "home", "enqueue", str(photo), "--task", SLEEP_TASK)
    assert image.exit_code == 2
    assert "is a file, not a directory" in image.output and f"({photo.parent})" in image.output
    assert "@" + str(photo) not in image.output
    binary = invoke(producer_app, tmp_path / "home", "enqueue", str(blob), "--task", SLEEP_TASK)
    assert binary.exit_code == 2 and "@" + str(blob) not in binary.output
    text = invoke(producer_app, tmp_path / "home", "enqueue", str(names), "--task", SLEEP_TASK)
    assert text.exit_code == 2 and f"use @{names}" in text.output
    # And the hint works: the list file enqueues
    listed = invoke(producer_app, tmp_path / "home", "enqueue", f"@{names}", "--task", SLEEP_TASK, "--json")
    assert listed.exit_code == 0, listed.output


def test_a_batch_size_out_of_range_names_the_flag(tmp_path: Path) -> None:
    write_sample_images(tmp_path / "images", 1, (16, 16))
    out = invoke(producer_app, tmp_path / "home", "enqueue", str(tmp_path / "images"), "--batch-size", "2000")
    assert out.exit_code == 2
    assert "--batch-size must be between 1 and 1024" in out.output and "WORKPOOL_BATCH_SIZE" not in out.output


# --- validate before enqueue -----------------------------------------------------------------
def code_carrying_model(path: Path, marker: Path) -> Path:
    """A model whose Lambda layer writes `marker` when its code runs."""
    import keras

    inputs = keras.Input((16, 16, 3))
    code = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), t)[1]")
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(code)(inputs)))
    model.save(path)
    marker.unlink()
    return path


@pytest.mark.slow
def test_enqueue_refuses_a_missing_or_unusable_model_before_anything_is_sent(tmp_path: Path) -> None:
    from tests.support.models import save_tiny_classifier

    home = tmp_path / "home"
    write_sample_images(tmp_path / "images", 2, (16, 16))
    src = str(tmp_path / "images")
    marker = tmp_path / "code-ran.txt"
    unsafe = {kind: code_carrying_model(tmp_path / f"lambda.{kind}", marker) for kind in ("keras", "h5")}
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a model at all")

    # A task that needs a model, without one: exit 2 naming --model
    missing = invoke(producer_app, home, "enqueue", src, "--run", "r0")
    assert missing.exit_code == 2 and "--model" in missing.output
    # A file that is no model, and models that would run code: refused, their code never run
    assert "not a model" in invoke(producer_app, home, "enqueue", src, "--model", str(junk)).output
    for path in unsafe.values():
        out = invoke(producer_app, home, "enqueue", src, "--model", str(path))
        assert out.exit_code == 2, out.output
        assert "runs Python code when loaded (Lambda layer)" in out.output
        assert "WORKPOOL_ALLOW_UNSAFE_MODELS=true" in out.output and "orchestration launch" in out.output
    assert not marker.exists()
    assert recorded(home) == []

    # A real model passes; one that runs code passes only when the setting vouches for it (still unrun)
    good = save_tiny_classifier(tmp_path / "models")
    assert invoke(producer_app, home, "enqueue", src, "--run", "ok", "--model", str(good)).exit_code == 0
    vouched = invoke(producer_app, home, "enqueue", src, "--run", "risky", "--model", str(unsafe["keras"]),
                     WORKPOOL_ALLOW_UNSAFE_MODELS="true")  # fmt: skip
    assert vouched.exit_code == 0, vouched.output
    assert not marker.exists()
    assert recorded(home) == ["ok", "risky"]

    # And when a consumer (safe by default) poisons that run, the hint names the step that applies the setting
    consumer = run_cli("consumer", load_settings(home=home), "run", "--idle-exit-s", "2", timeout_s=300)
    assert consumer.code == 0, consumer.stderr
    assert not marker.exists()
    poison = invoke(orchestration_app, home, "poison", "--run", "risky")
    assert "WORKPOOL_ALLOW_UNSAFE_MODELS" in poison.output
    assert "reaches the nodes only when the pool is launched" in poison.output
    assert "`orchestration teardown`, then `orchestration launch` again" in poison.output
    assert "producer requeue --run risky --failed" in poison.output


# --- status ----------------------------------------------------------------------------------
def test_the_status_header_stays_on_one_line_and_says_no_node(tmp_path: Path) -> None:
    out = invoke(orchestration_app, tmp_path / "home", "status", COLUMNS="80")
    assert out.exit_code == 0, out.output
    assert "local: 0 node(s), target 0" in out.output.splitlines()


@pytest.mark.slow
def test_status_watch_redraws_a_run_that_finished_as_done_in_a_terminal_and_without_one(tmp_path: Path) -> None:
    # Given two runs waiting, and `status --watch` (no --run) in a terminal and on a pipe
    settings = local_settings(tmp_path)
    write_sample_images(tmp_path / "images", 4, (16, 16))
    enqueue(settings, tmp_path / "images", "first", "--task", SLEEP_TASK, "--batch-size", "2")
    enqueue(settings, tmp_path / "images", "second", "--task", SLEEP_TASK, "--batch-size", "2")
    env = {**backend_env(settings), "COLUMNS": "120", "TERM": "xterm"}
    command = [sys.executable, "-m", "orchestration", "status", "--watch"]
    piped = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    controller, terminal = pty.openpty()
    shown = bytearray()
    tty = subprocess.Popen(command, env=env, stdout=terminal, stderr=terminal)
    os.close(terminal)

    def read_terminal() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(controller, 65536):
                shown.extend(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    try:
        wait_for(lambda: "first" in plain(shown), timeout_s=60, what="the first frame")

        # When a node scores both runs
        with torn_down(settings):
            assert orchestration(settings, "launch", "--nodes", "1").code == 0
            for run_id in ("first", "second"):
                assert orchestration(settings, "wait", "--run", run_id).code == 0

            # Then the terminal redraws the older run's bar as done (it ended, and is no longer "going")
            bar = re.compile(r"first\s+\S*\s*2/2 batches · done")
            wait_for(lambda: bar.search(plain(shown)), timeout_s=30, what="first's bar, done")
    finally:
        for proc in (tty, piped):
            proc.send_signal(signal.SIGINT)
        out, _ = piped.communicate(timeout=30)
        tty.wait(timeout=30)
        reader.join(timeout=10)
        os.close(controller)

    # And so does the view without a terminal, in its last frame
    assert re.search(r"first\s+\S*\s*2/2 batches · done", out), out
    assert "1/2 batches" not in out.split("runs")[-1]


# --- wait with no node -----------------------------------------------------------------------
def test_wait_with_no_node_running_says_so_at_once_and_names_launch(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    write_sample_images(tmp_path / "images", 2, (16, 16))
    enqueue(settings, tmp_path / "images", "alone", "--task", SLEEP_TASK)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestration", "wait", "--run", "alone", "--timeout-s", "120"],
        env=backend_env(settings),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        took = time.monotonic() - started
        # Then, before its first look at the run (process start-up included), one line naming `launch`
        assert "no node is running" in line and "orchestration launch --nodes N" in line, line
        assert took < 30
        assert proc.poll() is None  # and it keeps waiting for the run
    finally:
        proc.kill()
        proc.communicate(timeout=30)


# --- settings on a running pool ----------------------------------------------------------------
@pytest.mark.slow
def test_scale_names_the_settings_that_differ_from_the_pools_and_how_to_apply_them(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    with torn_down(settings):
        assert orchestration(settings, "launch", "--nodes", "1").code == 0
        same = orchestration(settings, "scale", "--nodes", "2")
        assert same.code == 0, same.stderr
        assert "differ" not in same.stderr
        changed = orchestration(settings, "scale", "--nodes", "1", env={"WORKPOOL_ALLOW_UNSAFE_MODELS": "true"})
        assert changed.code == 0, changed.stderr
        assert "WORKPOOL_ALLOW_UNSAFE_MODELS: (default) on the pool, true now" in changed.stderr
        assert "orchestration teardown`, then `orchestration launch" in changed.stderr


# --- report --plot of a sub-second run ------------------------------------------------------------
@pytest.mark.slow
def test_the_plot_of_a_short_run_spans_that_run_and_not_the_next_runs_pool_events(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    write_sample_images(tmp_path / "images", 2, (16, 16))
    with torn_down(settings):
        # Given a node already up and idle, a short run, then the pool grown for the next run
        assert orchestration(settings, "launch", "--nodes", "1").code == 0
        enqueue(settings, tmp_path / "images", "brief", "--task", SLEEP_TASK)
        assert orchestration(settings, "wait", "--run", "brief").code == 0
        last_ack = max(r.acked_at for r in RunStore(open_result_store(settings)).read_batch_records("brief"))
        wait_for(lambda: datetime.now(UTC) - last_ack > timedelta(seconds=3), timeout_s=10, what="3 s after the run")
        assert orchestration(settings, "scale", "--nodes", "2").code == 0

        # When its report is plotted
        plot = tmp_path / "brief.png"
        out = orchestration(settings, "report", "--run", "brief", "--plot", str(plot), "--json")
    assert out.code == 0, out.stderr

    # Then the x axis ends with the run (the scale after it is the next run's), one lane for its worker
    report = out.json()
    run_s = datetime.fromisoformat(report["last_acked_at"]) - datetime.fromisoformat(report["enqueued_at"])
    with Image.open(plot) as picture:
        description = picture.info["Description"]
    match = re.match(r"x axis 0 to ([\d.]+) s; 1 worker lane\(s\)", description)
    assert match, description
    assert float(match.group(1)) <= max(run_s.total_seconds() * 1.06, 1.0) + 0.01


# --- the lifecycle commands' text, in-process --------------------------------------------------
def test_runs_cancel_and_wait_speak_plainly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_sample_images(tmp_path / "images", 4, (16, 16))
    assert "no runs on queue" in invoke(orchestration_app, home, "runs").output
    src = str(tmp_path / "images")
    enqueued = invoke(producer_app, home, "enqueue", src, "--run", "plain", "--task", SLEEP_TASK, "--batch-size", "2")
    assert enqueued.exit_code == 0, enqueued.output

    listing = invoke(orchestration_app, home, "runs").output.splitlines()
    assert listing[0].split() == ["run", "created", "(UTC)", "images", "batches", "done", "poisoned", "failed",
                                  "images", "state"]  # fmt: skip
    assert listing[1].split()[0] == "plain" and listing[1].split()[-1] == "pending"

    cancelled = invoke(orchestration_app, home, "cancel", "--run", "plain")
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelled run plain: took 2 waiting batches off the queue; none in flight; 0/2 batches done" in (
        cancelled.output
    )
    again = invoke(orchestration_app, home, "cancel", "--run", "plain")
    assert "it was cancelled already" in again.output and "took 0 waiting batches" in again.output
    assert invoke(orchestration_app, home, "runs").output.splitlines()[1].split()[-1] == "cancelled"

    waited = invoke(orchestration_app, home, "wait", "--run", "plain")
    assert waited.exit_code == 1
    assert "(cancelled at" in waited.output and "0 done, 0 poisoned, 2 cancelled" in waited.output
    assert "no node is running" not in waited.output  # the run has ended: nothing to launch for
    assert "cancelled" in invoke(orchestration_app, home, "status", COLUMNS="160").output
    unknown = invoke(orchestration_app, home, "cancel", "--run", "nope")
    assert unknown.exit_code == 2 and "orchestration runs" in unknown.output
