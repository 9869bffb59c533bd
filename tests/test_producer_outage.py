"""The producer rides out a storage outage in the middle of sending a run.

The outage is real: the embedded database is locked by another connection, or the Azurite
server is stopped and restarted on disk. It starts right after the first chunk of messages has
been sent (from the progress callback), so it always falls mid-run, and the test then checks
that every message arrived exactly once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from producer.sending import SendIncomplete, send_all
from tests.support.azurite import Azurite
from tests.support.producer_cli import drain_bodies, producer, queue_depth, recorded_runs
from workpool.queue.embedded import EmbeddedQueue
from workpool.retry import RetryPolicy
from workpool.settings import load_settings

QUICK = RetryPolicy(first_delay_s=0.2, max_delay_s=1.0, give_up_after_s=60)
BODIES = [f"message {i:03d}" for i in range(300)]


@pytest.mark.faults
def test_a_locked_embedded_queue_mid_send_costs_a_pause_not_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an embedded queue that waits only briefly for SQLite's lock (so our retry is what copes)
    path = tmp_path / "queue.sqlite3"
    queue = EmbeddedQueue(path, "work", busy_timeout_s=0.1)
    queue.create()
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    unlocked = threading.Event()

    def unlock() -> None:
        locker.rollback()
        unlocked.set()

    def lock_after_first_chunk(n: int) -> None:
        if not unlocked.is_set() and locker.in_transaction is False:
            locker.execute("BEGIN EXCLUSIVE")  # another process holding the database
            threading.Timer(1.5, unlock).start()

    # When 300 messages are sent in chunks of 100 and the database locks after the first chunk
    with caplog.at_level(logging.WARNING, logger="workpool.retry"):
        sent = send_all(queue, BODIES, ttl_s=-1, on_sent=lock_after_first_chunk, chunk=100, policy=QUICK)

    # Then the send waited the lock out and every message arrived once, in order
    assert unlocked.is_set()
    assert sent == 300
    assert any("retrying" in r.getMessage() for r in caplog.records)
    received = []
    while batch := queue.receive(32, visibility_timeout_s=60):
        received += [m.body for m in batch]
    assert received == BODIES
    queue.close()
    locker.close()


@pytest.mark.faults
def test_a_lock_that_outlasts_the_retry_budget_fails_naming_what_was_sent(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    queue = EmbeddedQueue(path, "work", busy_timeout_s=0.1)
    queue.create()
    queue.send(["already there"])
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(SendIncomplete, match="sent 0 of 300 messages") as failure:
            send_all(queue, BODIES, ttl_s=-1, policy=RetryPolicy(first_delay_s=0.1, give_up_after_s=0.5))
        assert failure.value.sent == 0
    finally:
        locker.rollback()
        locker.close()
    assert queue.depth().messages == 1  # nothing half-written
    queue.close()


@pytest.mark.faults
@pytest.mark.azurite
def test_azurite_stopped_mid_send_and_restarted_loses_nothing(
    own_azurite: Azurite, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from workpool.queue import open_queue

    settings = load_settings(home=tmp_path / "home", queue="outage", connection_string=own_azurite.connection_string)
    queue = open_queue(settings)
    queue.create()
    restarted = threading.Event()

    def restart() -> None:
        own_azurite.start()
        restarted.set()

    def stop_after_first_chunk(n: int) -> None:
        if own_azurite.proc is not None and not restarted.is_set():
            own_azurite.stop()  # the storage account goes away mid-run...
            # ...for longer than the SDK's own retries (about 6 s), so the producer's backoff is
            # what carries the run through.
            threading.Timer(9.0, restart).start()

    with caplog.at_level(logging.WARNING, logger="workpool.retry"):
        sent = send_all(queue, BODIES, ttl_s=-1, on_sent=stop_after_first_chunk, chunk=100, policy=QUICK)
    queue.close()

    assert restarted.is_set()
    assert sent == 300
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert sorted(drain_bodies(settings)) == BODIES  # each exactly once


@pytest.mark.faults
@pytest.mark.azurite
def test_enqueue_with_storage_down_fails_with_exit_1_and_writes_nothing(own_azurite: Azurite, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", queue="down", connection_string=own_azurite.connection_string)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    own_azurite.stop()
    out = producer(
        settings, "enqueue", str(tmp_path / "images"), "--run", "down-1", "--task", "consumer.tasks.examples:SleepTask"
    )
    assert out.code == 1, out.stderr
    assert "storage unreachable" in out.stderr and "Traceback" not in out.stderr
    own_azurite.start()
    assert queue_depth(settings) == 0
    assert recorded_runs(settings) == []


@pytest.mark.faults
@pytest.mark.azurite
def test_a_refused_send_removes_the_manifest_and_keeps_the_sas_secret(azurite: Azurite, tmp_path: Path) -> None:
    # Given a SAS token that may create queues and write blobs but not add messages
    from azure.storage.blob import AccountSasPermissions, ResourceTypes
    from azure.storage.blob._shared.shared_access_signature import SharedAccessSignature

    from tests.support.azurite import ACCOUNT, ACCOUNT_KEY

    no_add = AccountSasPermissions(read=True, write=True, delete=True, list=True, create=True, update=True)
    sas = SharedAccessSignature(ACCOUNT, ACCOUNT_KEY).generate_account(
        services="bq",  # one token for both services
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=no_add,
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    connection = (
        f"BlobEndpoint=http://127.0.0.1:{azurite.blob_port}/{ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:{azurite.queue_port}/{ACCOUNT};SharedAccessSignature={sas}"
    )
    settings = load_settings(home=tmp_path / "home", queue="noadd", results="noadd-res", connection_string=connection)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")

    # When a run is enqueued: the manifest is written, then the first send is refused
    out = producer(
        settings,
        "enqueue",
        str(tmp_path / "images"),
        "--run",
        "refused-1",
        "--json",
        "--task",
        "consumer.tasks.examples:SleepTask",
    )

    # Then it fails during the work (exit 1), names the refusal, and leaves no manifest behind
    assert out.code == 1, out.stderr
    assert "send to queue noadd" in out.stderr and "403" in out.stderr  # refused after the manifest was written
    assert "Traceback" not in out.stderr
    assert out.stdout == ""
    signature = sas.split("sig=")[1].split("&")[0]
    assert sas not in out.stderr and signature not in out.stderr
    assert recorded_runs(settings) == []
