"""`orchestration wait` rides out a storage outage: its looks back off (jittered) instead of failing.

A run can take hours; a storage account that blinks meanwhile must cost the wait a pause, not the
wait itself (exit 1 and no report). The outage is real: the test's own Azurite is stopped and
restarted while `wait_for_drain` is polling.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from consumer.runner import Consumer
from orchestration.reports.drain import DrainReport, wait_for_drain
from tests.support.azurite import Azurite
from tests.support.faults_pool import enqueue_run, staged_images
from tests.support.waiting import wait_for
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import load_settings
from workpool.storage import open_result_store

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_waiting_for_a_drain_rides_out_storage_going_down_and_coming_back(
    own_azurite: Azurite, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(home=tmp_path / "home", queue="blink", results="blink-results",
                             connection_string=own_azurite.connection_string)  # fmt: skip
    source, names = staged_images(settings, tmp_path / "images", 4)
    enqueue_run(settings, source, "r1", "--task", "consumer.tasks.examples:SleepTask", "--batch-size", "2")

    # Given a wait for the run, polling
    outcome: list[DrainReport | BaseException] = []

    def wait() -> None:
        try:
            runs = RunStore(open_result_store(settings))
            outcome.append(wait_for_drain(runs, open_queue(settings), "r1", poll_s=0.2, timeout_s=300))
        except BaseException as exc:  # reported below
            outcome.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    with caplog.at_level(logging.WARNING, logger="workpool.retry"):
        waiter.start()

        # When storage goes down under it, long enough for its looks to fail
        own_azurite.stop()
        wait_for(
            lambda: "retrying in" in caplog.text or outcome, timeout_s=120, what="the wait to meet the outage (or fail)"
        )
        assert not outcome, outcome

        # And comes back, and a consumer drains the run
        own_azurite.start()
        consumer = Consumer(settings.model_copy(update={"idle_exit_s": 2.0}), "w1", poll_s=0.1)
        consumer.run()
        waiter.join(120)

    # Then the wait reports the drained run as if nothing had happened
    assert not waiter.is_alive()
    [report] = outcome
    assert isinstance(report, DrainReport), report
    assert report.images_ok == len(names) and report.batches_poisoned == 0
    assert "storage unreachable" in caplog.text
