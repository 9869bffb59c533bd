"""The dashboard in a real browser during a live local run (real supervisor, real consumers).

Headless Chromium (Debian's `chromium`, installed by `make test`) is driven through
playwright-core (npm, tests/support/dashboard_browser.mjs): it renders the page served by
`orchestration dashboard`, reads the DOM as the run moves and saves a screenshot. The consumers
sample a fake NVML (tests/support/fake_nvml/ first on their PYTHONPATH), so the same run shows
GPU busy % in the page, in `status` and in `report`.

`DASHBOARD_SCREENSHOT=docs/images/dashboard.png` keeps the screenshot there (the docs' picture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import ROOT, env_for
from tests.support.dashboard_server import DashboardProcess
from tests.support.images import write_sample_images
from tests.support.orchestration_cli import SLEEP_TASK, enqueue, orchestration, torn_down
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FAKE_NVML = ROOT / "tests" / "support" / "fake_nvml"
SCRIPT = ROOT / "tests" / "support" / "dashboard_browser.mjs"


def require_browser() -> None:
    """Skip without Chromium, Node or playwright-core, except in CI, where that is a failure."""
    missing = [
        what
        for what, ok in (
            (f"chromium at {CHROMIUM} (apt-get install chromium)", Path(CHROMIUM).exists()),
            ("node", shutil.which("node") is not None),
            ("playwright-core (npm ci)", (ROOT / "node_modules" / "playwright-core").exists()),
        )
        if not ok
    ]
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the browser test needs {', '.join(missing)}")
        pytest.skip(f"no browser here: {', '.join(missing)}")


@pytest.mark.parametrize("backend", ["embedded"])
def test_the_page_shows_a_live_local_run_moving_with_gpu_busy_in_page_status_and_report(
    settings: Settings, tmp_path: Path
) -> None:
    require_browser()
    # Given a run of 24 batches and a dashboard on a free port
    write_sample_images(tmp_path / "images", 96, (32, 24))
    enqueue(settings, tmp_path / "images", "live", "--task", SLEEP_TASK, "--batch-size", "4")
    pythonpath = os.pathsep.join([str(FAKE_NVML), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.08", "PYTHONPATH": pythonpath, "FAKE_NVML_BUSY": "73"}
    screenshot = tmp_path / "dashboard.png"
    priced = {**env, "WORKPOOL_PRICE_PER_NODE_HOUR": "3.67"}
    with torn_down(settings, env), DashboardProcess(settings, tmp_path, priced) as dashboard:
        # When Chromium opens the page, and then two nodes (with a fake GPU each) drain the run
        browser = subprocess.Popen(
            ["node", str(SCRIPT), dashboard.url, "live", str(screenshot), "150"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env_for(settings), "CHROMIUM": CHROMIUM},
        )
        try:
            launched = orchestration(settings, "launch", "--nodes", "2", env=env)
            assert launched.code == 0, launched.stderr
            out, err = browser.communicate(timeout=200)
        finally:
            if browser.poll() is None:
                browser.kill()
                browser.wait()
        assert browser.returncode == 0, err
        seen = json.loads(out)
        status = orchestration(settings, "status", "--run", "live", "--json", env=env).json()
        report = orchestration(settings, "report", "--run", "live", "--json", "--plot", str(tmp_path / "t.png"))
        status_text = orchestration(settings, "status", "--run", "live", env=env).stdout
        report_text = orchestration(settings, "report", "--run", "live").stdout

    # Then the page showed the run's id and its done count changing, up to the whole run
    assert seen["title"] == "workpool dashboard"
    assert {s["run"] for s in seen["samples"]} == {"live"}
    dones = [s["done"] for s in seen["samples"]]
    assert dones[0] != dones[1] and dones[-1] == "24/24", dones
    assert seen["queue"] == f"queue {settings.queue}"
    assert len(seen["nodes"]) == 2 and seen["lanes_title"].startswith("run live, ")
    assert any("launch" in d for d in seen["decisions"]), seen["decisions"]
    assert float(seen["cost"]) > 0  # node-seconds so far × 3.67 per node-hour
    # with every worker's GPU busy share, from the fake NVML, in the page, `status` and `report`
    assert seen["samples"][-1]["gpu"].count("73%") == 2, seen["samples"][-1]
    assert set(status["runs"][0]["gpu_busy_pct"].values()) == {73.0}
    assert report.code == 0, report.stderr
    assert set(report.json()["gpu_busy_pct"].values()) == {73.0}
    assert set(report.json()["gpu_busy_pct"]) == set(status["runs"][0]["gpu_busy_pct"])
    workers = sorted(status["runs"][0]["gpu_busy_pct"])
    assert f"GPU busy (last minute) live: {workers[0]} 73%, {workers[1]} 73%" in " ".join(status_text.split())
    assert f"GPU busy         {workers[0]} 73%, {workers[1]} 73%" in report_text
    assert (tmp_path / "t.png").read_bytes().startswith(b"\x89PNG")
    # and the page logged no console error, and the screenshot was taken
    assert seen["console_errors"] == [] and seen["page_errors"] == [] and seen["failed_requests"] == []
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    keep = os.environ.get("DASHBOARD_SCREENSHOT")
    if keep:
        (ROOT / keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, ROOT / keep)


@pytest.mark.parametrize("backend", ["embedded"])
def test_a_consumer_without_gpu_records_no_gpu_figures(settings: Settings, tmp_path: Path) -> None:
    """Absent, not zero: a run on machines without NVML (here: fake NVML with no GPU)."""
    write_sample_images(tmp_path / "images", 8, (32, 24))
    enqueue(settings, tmp_path / "images", "cpu", "--task", SLEEP_TASK, "--batch-size", "4")
    pythonpath = os.pathsep.join([str(FAKE_NVML), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0.01", "PYTHONPATH": pythonpath, "FAKE_NVML_GPUS": "0"}
    with torn_down(settings, env):
        launched = orchestration(settings, "launch", "--nodes", "1", env=env)
        assert launched.code == 0, launched.stderr
        waited = orchestration(settings, "wait", "--run", "cpu", "--json", "--timeout-s", "120", env=env)
        assert waited.code == 0, waited.stderr
        status = orchestration(settings, "status", "--run", "cpu", "--json", env=env).json()
        report = orchestration(settings, "report", "--run", "cpu", "--json").json()
    assert status["runs"][0]["gpu_busy_pct"] == {} and report["gpu_busy_pct"] == {}
    shown = orchestration(settings, "report", "--run", "cpu")
    assert shown.code == 0 and "GPU busy" not in shown.stdout
    records = RunStore(open_result_store(settings)).read_batch_records("cpu")
    assert len(records) == 2 and all(r.gpu_busy_pct is None and r.gpu_memory_mb is None for r in records)
