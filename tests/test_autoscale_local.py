"""The autoscaler end to end on the local backend: real `orchestration` and `consumer` processes.

`launch --autoscale 0:3` on an empty queue starts no node; a run enqueued later brings nodes up
within seconds; the run drains with every image exactly once; the pool goes back to zero after
`--idle-s`; the autoscaler's log and `status --json` show each decision with its inputs.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from orchestration.autoscale.process import log_path
from orchestration.local_state import pid_alive
from tests.support.faults_pool import check_every_image_once, enqueue_run, figures_line, staged_images
from tests.support.orchestration_cli import SLEEP_TASK, orchestration, pool, torn_down
from tests.support.waiting import wait_for
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
        time.sleep(2)
        assert live_nodes(settings) == 0
        status = status_json(settings, env)
        scaler = status["autoscaler"]
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

        # And the pool goes back to zero nodes after --idle-s
        drained_at = time.monotonic()
        wait_for(lambda: (p := pool(settings)) is not None and p.target == 0 and not p.nodes, timeout_s=60,
                 what="the pool to return to zero")  # fmt: skip
        to_zero_s = time.monotonic() - drained_at
        assert to_zero_s >= 3, "the pool waited out --idle-s (4 s) before scaling to zero"
        scaler = status_json(settings, env)["autoscaler"]
        assert isinstance(scaler, dict) and scaler["target"] == 0
        assert scaler["reason"] == "queue empty: at --min"
        change = scaler["last_change"]
        assert isinstance(change, dict) and (change["from"], change["to"]) == (3, 0)
        assert str(change["reason"]).startswith("scale to zero: queue empty for")
        pid = int(scaler["pid"])

    # The teardown stopped the autoscaler
    assert not pid_alive(pid, "autoscale")
    # Its log shows each decision with its inputs: activation on the backlog, then zero
    log = log_path(settings).read_text()
    activate = re.search(r"scaled 0 → (\d): activate: backlog (\d+) .*\| backlog=\d+ in_flight=\d+", log)
    assert activate is not None, log
    assert int(activate.group(1)) == 3
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
