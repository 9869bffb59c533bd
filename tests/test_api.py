"""The Python API (`from workpool import Pool, Run`) as a user drives it: a script of their own
against the embedded default, whose run the CLIs then show; errors, Ctrl-C, notebook manners."""

from __future__ import annotations

import _thread
import csv
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from tests.support.waiting import wait_for
from workpool import Autoscale, Pool, Run
from workpool.errors import SettingsError, UsageError, WorkpoolError

SLEEP_TASK = "consumer.tasks.examples:SleepTask"
ROOT = Path(__file__).resolve().parents[1]

# A user's script: nothing from the repository but the public API.
SCRIPT = """
import json, sys
import numpy as np
from PIL import Image
from workpool import Pool

folder = sys.argv[1]
import os
os.makedirs(folder, exist_ok=True)
for i in range(12):
    Image.fromarray(np.full((40, 30, 3), i * 20, dtype=np.uint8)).save(f"{folder}/img_{i:02d}.png")

pool = Pool(batch_size=4)
run = pool.enqueue(folder, run="script-1", task="consumer.tasks.examples:SleepTask")
pool.launch(nodes=2)
try:
    report = run.wait(timeout_s=240)
    table = run.results()
finally:
    pool.teardown()
print(json.dumps({
    "run": run.id,
    "ok": report.ok,
    "images_ok": report.images_ok,
    "batches_done": report.batches_done,
    "wall_s": report.wall_s,
    "workers": sorted(report.workers),
    "columns": table.column_names,
    "images": table.column("image").to_pylist(),
    "labels": table.column("top_label").to_pylist(),
}))
"""


def cli(home: Path, queue: str, *args: str) -> tuple[int, str, str]:
    """`orchestration ARGS` in this process (Typer's runner), on the test's home and queue."""
    env = {"WORKPOOL_HOME": str(home), "WORKPOOL_QUEUE": queue}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(app, list(args), env=env)
    finally:
        root.handlers[:], root.level = handlers, level  # the command configured logging on its own stderr
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.embedded
@pytest.mark.slow
def test_a_users_script_drives_a_run_end_to_end_and_the_clis_show_the_same_run(tmp_path: Path) -> None:
    home, queue = tmp_path / "home", "script"
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKPOOL_")}
    env |= {"WORKPOOL_HOME": str(home), "WORKPOOL_QUEUE": queue, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "photos")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["run"] == "script-1" and out["ok"] and out["images_ok"] == 12 and out["batches_done"] == 3
    assert out["wall_s"] > 0 and len(out["workers"]) >= 1
    assert out["columns"] == ["image", "status", "error", "top_label", "top_score", "predictions", "batch_id", "worker"]
    assert out["images"] == sorted(out["images"]) and len(out["images"]) == 12  # manifest order
    assert set(out["labels"]) == {"example"}
    assert "launched 2 node(s)" in proc.stderr and "tore down" in proc.stderr

    code, stdout, _ = cli(home, queue, "status", "--run", "script-1", "--json")
    assert code == 0
    status = json.loads(stdout)
    assert status["cluster"]["nodes"] == []  # torn down
    [shown] = status["runs"]
    assert (shown["run_id"], shown["batches_done"], shown["images_ok"], shown["complete"]) == ("script-1", 3, 12, True)
    code, stdout, _ = cli(home, queue, "results", "--run", "script-1", "--out", str(tmp_path / "r.csv"), "--json")
    assert code == 0 and json.loads(stdout)["rows"] == 12
    with (tmp_path / "r.csv").open() as f:
        assert [row["image"] for row in csv.DictReader(f)] == out["images"]


@pytest.mark.embedded
@pytest.mark.slow
def test_ctrl_c_in_wait_leaves_the_run_and_the_pool_going(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKPOOL_EXAMPLE_SLEEP_S", "0.5")  # the nodes inherit it: 20 images take about 10 s
    from tests.support.images import write_sample_images

    write_sample_images(tmp_path / "images", 20, (32, 32))
    pool = Pool(home=tmp_path / "home", queue="ctrlc", batch_size=2)
    pool.say = lambda _line: None
    run = pool.enqueue(tmp_path / "images", run="slow", task=SLEEP_TASK)
    pool.launch(nodes=1)
    try:
        entered, interrupted, lock = threading.Event(), threading.Event(), threading.Lock()
        waiting = [True]

        def interrupt() -> None:  # Ctrl-C once wait() waits and a batch more was scored meanwhile
            entered.wait(120)
            done = run.status()["batches_done"]
            wait_for(lambda: run.status()["batches_done"] > done, timeout_s=120, what="one more batch")
            with lock:
                if waiting[0]:
                    interrupted.set()
                    _thread.interrupt_main()

        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            try:
                entered.set()
                run.wait(timeout_s=240, poll_s=0.2)
            finally:
                with lock:
                    waiting[0] = False
        assert interrupted.is_set()
        assert not run.status()["complete"]
        # Nothing was torn down or cancelled: the node is still there and finishes the run.
        assert [n["state"] for n in pool.status()["cluster"]["nodes"]] == ["running"]
        report = run.wait(timeout_s=240)
        assert report.ok and report.images_ok == 20
        assert "<table>" in report._repr_html_() and "slow" in report._repr_html_()
        assert run.report(price_per_node_hour=3.6).cost.cost is not None
        figure = run.plot()
        assert len(figure.axes) >= 2
    finally:
        pool.teardown()


def test_errors_are_the_projects_exceptions_with_the_clis_messages(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="WORKPOOL_BATCH_SIZE"):
        Pool(home=tmp_path, batch_size=0)
    with pytest.raises(SettingsError, match="no_such_setting"):
        Pool(home=tmp_path, no_such_setting=1)
    pool = Pool(home=tmp_path / "home", queue="errors")
    cases = [
        (lambda: pool.run("no-such-run"), UsageError, "no-such-run"),
        (lambda: pool.launch(), UsageError, "give --nodes N"),
        (lambda: pool.launch(2, autoscale="0:2"), UsageError, "one of them"),
        (lambda: pool.launch(autoscale="zero:3"), UsageError, "MIN:MAX"),
        (lambda: pool.enqueue(tmp_path / "missing"), UsageError, "missing"),
        (lambda: pool.enqueue(tmp_path, batch_size=2000), UsageError, "--batch-size must be between 1 and 1024"),
        (lambda: pool.benchmark(tiers=[0]), UsageError, "--tiers"),
        (lambda: Pool(home=tmp_path, backend="kubernetes").scale(1), UsageError, "kubernetes"),
    ]
    for call, kind, text in cases:
        try:
            call()
        except BaseException as exc:  # a SystemExit would be the bug
            assert isinstance(exc, kind) and isinstance(exc, WorkpoolError), repr(exc)
            assert text in str(exc)
        else:
            pytest.fail(f"no error for {text}")


def test_import_workpool_is_cheap_and_the_api_loads_on_first_use() -> None:
    code = textwrap.dedent(
        """
        import sys, workpool
        roles = ("orchestration", "producer", "consumer", "tensorflow", "azure")
        assert not [m for m in sys.modules if m.split(".")[0] in roles], sorted(sys.modules)
        from workpool import Pool, Run
        assert Pool.__module__ == "orchestration.api.pool" and Run.__module__ == "orchestration.api.run"
        assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "azure")]
        assert set(workpool.__all__) >= {"Pool", "Run"}
        try:
            workpool.Nope
        except AttributeError as exc:
            assert "Nope" in str(exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Run.__name__ == "Run"


def test_launch_autoscale_takes_the_autoscalers_options(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # The issue's own example, as a dry run: it used to fail with "No such option: --idle-s".
    code, stdout, stderr = cli(home, "opts", "launch", "--autoscale", "0:3", "--idle-s", "8", "--dry-run")
    assert code == 0, stderr
    assert "Would launch 0 node(s) on local" in stdout
    code, _, stderr = cli(home, "opts", "launch", "--nodes", "1", "--idle-s", "8")
    assert code == 2 and "--idle-s: autoscaler options, for use with --autoscale MIN:MAX" in stderr
    code, _, stderr = cli(home, "opts", "launch", "--autoscale", "0:3", "--cooldown-s", "-1")
    assert code == 2
    assert Autoscale.parse("1:4", idle_s=8).limits(Pool(home=home).settings).idle_s == 8


@pytest.mark.embedded
@pytest.mark.slow
def test_the_detached_autoscaler_gets_the_options_launch_was_given(tmp_path: Path) -> None:
    from orchestration.autoscale.state import read_state
    from workpool.storage import open_result_store

    pool = Pool(home=tmp_path / "home", queue="detached", price_per_node_hour=2.5)  # an override of this Pool
    pool.say = lambda _line: None
    try:
        cluster = pool.launch(autoscale=Autoscale(0, 2, idle_s=7, cooldown_s=3))
        assert cluster["nodes"] == [] and "<table>" in cluster._repr_html_()
        state = wait_for(
            lambda: read_state(open_result_store(pool.settings), "detached"), timeout_s=60, what="autoscaler state"
        )
        args = Path(f"/proc/{state['pid']}/cmdline").read_bytes().split(b"\0")
        environment = Path(f"/proc/{state['pid']}/environ").read_bytes().split(b"\0")
        assert b"WORKPOOL_PRICE_PER_NODE_HOUR=2.5" in environment  # the Pool's settings, not only the shell's
        assert float(args[args.index(b"--idle-s") + 1]) == 7 and float(args[args.index(b"--cooldown-s") + 1]) == 3
        assert pool.status()["autoscaler"] is not None
    finally:
        pool.teardown()


WAIT_SCRIPT = """
import sys
import numpy as np
from PIL import Image
from workpool import Pool

for i in range(6):
    Image.fromarray(np.full((32, 32, 3), i * 40, dtype=np.uint8)).save(f"{sys.argv[1]}/p{i}.png")
pool = Pool(batch_size=2)
run = pool.enqueue(sys.argv[1], run="tty-1", task="consumer.tasks.examples:SleepTask")
pool.launch(nodes=1)
try:
    print("drained", run.wait(timeout_s=240).batches_done, flush=True)
finally:
    pool.teardown()
"""


@pytest.mark.embedded
@pytest.mark.slow
def test_wait_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    import pty

    (tmp_path / "photos").mkdir()
    script = tmp_path / "wait.py"
    script.write_text(textwrap.dedent(WAIT_SCRIPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKPOOL_")}
    env |= {"WORKPOOL_HOME": str(tmp_path / "home"), "WORKPOOL_QUEUE": "tty", "PYTHONPATH": str(ROOT)}
    env |= {"WORKPOOL_EXAMPLE_SLEEP_S": "0.3", "COLUMNS": "120"}
    master, slave = pty.openpty()
    with subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "photos")],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=slave, text=True,
    ) as proc:  # fmt: skip
        os.close(slave)
        seen = bytearray()
        while True:  # the terminal's bytes until the script closes its end
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: no writer left
                break
            if not chunk:
                break
            seen += chunk
        out, _ = proc.communicate(timeout=240)
    os.close(master)
    assert proc.returncode == 0, seen.decode(errors="replace")
    assert out.strip() == "drained 3"
    terminal = seen.decode(errors="replace")
    assert "run tty-1" in terminal and "batches" in terminal and "images/s" in terminal
