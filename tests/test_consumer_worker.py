"""The worker's promises about messages: leases held while scoring, ack only after results,
retry with backoff, poison what can never succeed, and carry on through storage outages.

Scoring here is the model-free example task (`consumer.tasks.examples`), so these stories are
about the queue and the store, in memory and on Azurite (the embedded backend keeps its own
tests here where it matters, and the contract suites).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from consumer.runner import Consumer
from consumer.tasks.base import Array
from consumer.tasks.examples import SleepTask
from tests.conftest import IN_PROCESS_BACKENDS
from tests.support.azurite import Azurite
from tests.support.images import stage_folder, write_sample_images
from tests.support.messages import record_runs
from tests.support.waiting import wait_for
from workpool.messages import BatchMessage
from workpool.queue import PoisonRecord, WorkQueue, open_queue
from workpool.retry import Backoff
from workpool.runs import RunStore
from workpool.settings import Settings, load_settings
from workpool.storage import open_result_store

EXAMPLES = "consumer.tasks.examples"


class CountingTask(SleepTask):
    """The example task, counting how often each batch size was scored (in this process)."""

    scored: ClassVar[list[int]] = []

    def predict(self, batch: Array) -> Any:
        CountingTask.scored.append(len(batch))
        return super().predict(batch)


COUNTING = f"{__name__}:CountingTask"


@pytest.fixture(params=IN_PROCESS_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def images(settings: Settings, tmp_path: Path) -> tuple[str, list[str]]:
    names = write_sample_images(tmp_path / "images", 4, (64, 48))
    return stage_folder(settings, tmp_path / "images"), names


def batch(source: str, images: list[str], batch_id: str = "b1", task: str = f"{EXAMPLES}:SleepTask") -> BatchMessage:
    return BatchMessage(run_id="r1", batch_id=batch_id, task=task, source=source, images=images)


def queue_of(settings: Settings, *messages: BatchMessage | str) -> WorkQueue:
    queue = open_queue(settings)
    queue.create()
    if messages:
        record_runs(settings, *(m for m in messages if not isinstance(m, str)))
        queue.send([m if isinstance(m, str) else m.encode() for m in messages])
    return queue


def runs(settings: Settings) -> RunStore:
    return RunStore(open_result_store(settings))


def consumer_for(settings: Settings, **changes: Any) -> Consumer:
    return Consumer(settings.model_copy(update=changes), "w1", backoff=Backoff(base_s=1, cap_s=1), poll_s=0.05)


def test_a_batch_scoring_three_times_the_visibility_timeout_is_scored_and_acked_once(
    settings: Settings, images: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a batch whose scoring takes 3.5 s under a 1 s visibility timeout
    monkeypatch.setenv("WORKPOOL_EXAMPLE_SLEEP_S", "3.5")
    CountingTask.scored.clear()
    source, names = images
    queue = queue_of(settings, batch(source, names[:1], task=COUNTING))
    consumer = consumer_for(settings, visibility_timeout_s=1)

    # When a consumer scores it while a competitor keeps asking the queue for work
    consumer.start()
    stolen = []
    wait_for(lambda: consumer.leases.held(), what="the consumer to take the batch")
    while not runs(settings).result_batch_ids("r1"):
        stolen += queue.receive(1, visibility_timeout_s=1)
        threading.Event().wait(0.2)
    wait_for(lambda: queue.depth().messages == 0, what="the ack")
    consumer.request_stop()
    consumer.wait()

    # Then the lease never lapsed: nobody else got it, it was scored once and acked once
    assert stolen == []
    assert CountingTask.scored == [1]
    [record] = runs(settings).read_batch_records("r1")
    assert record.attempt == 1 and record.images == 1
    assert consumer.images_processed == 1


def test_results_are_written_before_the_ack_with_the_timing_record_after(
    settings: Settings, images: tuple[str, list[str]]
) -> None:
    # Given one batch and a consumer without prefetch, driven one iteration at a time
    source, names = images
    queue = queue_of(settings, batch(source, names))
    consumer = consumer_for(settings, prefetch_batches=0)
    consumer.prepare_storage()
    acked_with_results: list[bool] = []
    real_ack = queue.ack

    def ack_checking_results(message: Any) -> None:
        acked_with_results.append("b1" in runs(settings).result_batch_ids("r1"))
        real_ack(message)

    consumer.worker.queue = consumer.queue = queue
    consumer.prefetcher.queue = consumer.leases.queue = queue
    queue.ack = ack_checking_results  # type: ignore[method-assign]

    # When the worker runs one iteration
    job = consumer.worker.step(threading.Event())

    # Then the results were durable at the moment of the ack, and the record carries the timing
    assert job is not None and acked_with_results == [True]
    rows = runs(settings).read_results("r1", "b1")
    assert [r.image for r in rows] == names and {r.status for r in rows} == {"ok"}
    assert {r.worker for r in rows} == {"w1"}
    [record] = runs(settings).read_batch_records("r1")
    assert record.dequeued_at <= record.scored_at <= record.acked_at
    assert (record.worker, record.attempt, record.images, record.images_ok) == ("w1", 1, 4, 4)
    assert record.images_per_s > 0
    assert queue.depth().messages == 0


def test_messages_that_can_never_succeed_go_to_poison_at_once(
    settings: Settings, images: tuple[str, list[str]]
) -> None:
    # Given a message that is not JSON, one with the wrong schema and one naming an unknown task
    source, names = images
    queue = queue_of(
        settings,
        "this is not json",
        '{"schema_version": 1, "run_id": "r1"}',
        batch(source, names, batch_id="b-unknown", task="tests.no_such_module:Task"),
    )

    # When a consumer drains the queue (max attempts 5: no retries happen)
    consumer = consumer_for(settings, idle_exit_s=0.5)
    consumer.run()

    # Then all three were dead-lettered on their first delivery, with their reasons
    assert queue.depth().messages == 0
    records = [PoisonRecord.decode(m.body) for m in queue.poison().receive(32)]
    assert sorted(r.attempts for r in records) == [1, 1, 1]
    reasons = " | ".join(sorted(r.reason for r in records))
    assert "not JSON" in reasons and "invalid message" in reasons and "unknown task" in reasons
    # And the one whose run is known got a poison report in the result store
    [report] = runs(settings).read_poison("r1")
    assert report.batch_id == "b-unknown" and "cannot import" in report.reason


def test_a_failing_batch_is_released_with_backoff_then_dead_lettered_after_max_attempts(
    settings: Settings, images: tuple[str, list[str]]
) -> None:
    # Given a batch that fails every time it is scored, and at most 2 attempts
    source, names = images
    queue = queue_of(settings, batch(source, names, task=f"{EXAMPLES}:FailingTask"))
    consumer = consumer_for(settings, prefetch_batches=0, max_attempts=2)
    consumer.prepare_storage()
    stop = threading.Event()

    # When the worker runs one iteration
    consumer.worker.step(stop)

    # Then the batch is released with a delay: still on the queue, not visible at once
    assert queue.depth().messages == 1
    assert queue.receive(1, visibility_timeout_s=1) == []
    assert not runs(settings).result_batch_ids("r1")

    # When it comes back and fails a second time
    wait_for(lambda: consumer.worker.step(stop), timeout_s=10, what="the batch to come back")

    # Then it is dead-lettered with the last error, and a poison report names it
    assert queue.depth().messages == 0
    [poisoned] = queue.poison().receive(1)
    record = PoisonRecord.decode(poisoned.body)
    assert record.attempts == 2 and "FailingTask always fails" in record.reason
    [report] = runs(settings).read_poison("r1")
    assert report.attempts == 2 and report.worker == "w1"


def test_a_batch_delivered_more_than_max_attempts_is_dead_lettered_without_scoring(
    settings: Settings, images: tuple[str, list[str]]
) -> None:
    # Given a batch already delivered once to a consumer that died with it (max attempts 1)
    CountingTask.scored.clear()
    source, names = images
    queue = queue_of(settings, batch(source, names, task=COUNTING))
    [first] = queue.receive(1, visibility_timeout_s=1)

    # When its lease runs out and a consumer receives it again
    consumer = consumer_for(settings, prefetch_batches=0, max_attempts=1)
    consumer.prepare_storage()
    wait_for(lambda: consumer.worker.step(threading.Event()), timeout_s=10, what="the redelivery")

    # Then it goes to poison unscored: it has had all its attempts
    assert CountingTask.scored == []
    [poisoned] = queue.poison().receive(1)
    assert PoisonRecord.decode(poisoned.body).attempts == 2
    assert first.dequeue_count == 1


@pytest.mark.embedded
def test_a_locked_embedded_database_is_waited_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an embedded queue with three batches of 0.5 s each, and a consumer whose database
    # busy timeout is short
    monkeypatch.setenv("WORKPOOL_EXAMPLE_SLEEP_S", "0.5")
    settings = load_settings(home=tmp_path / "home", queue="locked")
    names = write_sample_images(tmp_path / "images", 3, (32, 32))
    queue_of(settings, *(batch(str(tmp_path / "images"), [n], batch_id=f"b{i}") for i, n in enumerate(names)))
    from workpool.queue.embedded import EmbeddedQueue

    short = EmbeddedQueue(settings.home / "queue.sqlite3", settings.queue, busy_timeout_s=0.2)
    consumer = Consumer(settings.model_copy(update={"idle_exit_s": 1.0}), "w1", queue=short, poll_s=0.05)

    # When another writer locks the database while the first batch is being scored, and lets
    # go only after the consumer has run into the lock
    consumer.start()
    wait_for(lambda: consumer.leases.held(), what="the first batch")
    blocker = sqlite3.connect(settings.home / "queue.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    wait_for(lambda: "database is locked" in caplog.text, what="the consumer to run into the lock")
    blocker.execute("COMMIT")
    blocker.close()
    consumer.wait()

    # Then it carried on and finished every batch
    assert consumer.error is None
    assert runs(settings).result_batch_ids("r1") == {"b0", "b1", "b2"}
    assert short.depth().messages == 0


@pytest.mark.azurite
@pytest.mark.faults
def test_a_storage_outage_mid_run_is_survived(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an Azurite of our own (on disk, so it survives a restart) with four batches queued
    monkeypatch.setenv("WORKPOOL_EXAMPLE_SLEEP_S", "1.0")
    server = Azurite(location=tmp_path / "azurite")
    server.start()
    try:
        settings = load_settings(home=tmp_path / "home", queue="outage", results="outage-results",
                                 connection_string=server.connection_string)  # fmt: skip
        names = write_sample_images(tmp_path / "images", 4, (32, 32))
        source = stage_folder(settings, tmp_path / "images")
        queue_of(settings, *(batch(source, [n], batch_id=f"b{i}") for i, n in enumerate(names)))
        consumer = Consumer(settings.model_copy(update={"idle_exit_s": 2.0, "visibility_timeout_s": 30}), "w1",
                            poll_s=0.05)  # fmt: skip

        # When storage goes away while the first batch is being scored, and comes back 4 s later
        consumer.start()
        wait_for(lambda: consumer.leases.held(), what="the first batch")
        server.stop()
        threading.Event().wait(4)  # the outage itself: a fixed length is the point here
        server.start()
        consumer.wait()

        # Then the consumer kept going and every batch has its results, acked once
        assert consumer.error is None
        assert runs(settings).result_batch_ids("r1") == {"b0", "b1", "b2", "b3"}
        assert open_queue(settings).depth().messages == 0
        assert consumer.images_processed == 4
    finally:
        server.stop()


def test_the_next_batch_is_prepared_while_one_is_scored_and_no_more_is_taken(
    settings: Settings, images: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given five one-image batches that take 2 s each to score, and one batch of prefetch
    monkeypatch.setenv("WORKPOOL_EXAMPLE_SLEEP_S", "2")
    source, names = images
    queue = queue_of(settings, *(batch(source, [names[i % 4]], batch_id=f"b{i}") for i in range(5)))
    consumer = consumer_for(settings, prefetch_batches=1, visibility_timeout_s=30)

    # When the consumer is scoring its first batch
    consumer.start()
    try:
        wait_for(lambda: consumer.prefetcher._ready.qsize() == 1, what="the next batch to be prepared")

        # Then the second batch is already received, fetched and decoded, while the first one is
        # still being scored
        assert not runs(settings).result_batch_ids("r1")
        prepared = consumer.prefetcher._ready.queue[0]
        assert all(image.array is not None for image in prepared.images)

        # And it holds only those two: the other three are there for other consumers
        assert len(consumer.leases.held()) == 2
        others = queue.receive(32, visibility_timeout_s=30)
        assert len(others) == 3
        for message in others:
            queue.release(message)
    finally:
        consumer.request_stop()
        consumer.wait()


def test_leases_are_renewed_a_third_of_the_way_through_always_with_the_newest_receipt(settings: Settings) -> None:
    from consumer.lease import LeaseKeeper
    from workpool.errors import LeaseLostError

    # Given a held message and a lease keeper on a clock the test moves by hand
    queue = queue_of(settings, "a message")
    [message] = queue.receive(1, visibility_timeout_s=30)
    now = [0.0]
    keeper = LeaseKeeper(queue, 30, clock=lambda: now[0])
    keeper.hold(message)

    # When less than a third of the timeout has passed, nothing is renewed
    now[0] = 9.0
    keeper.renew_due()
    assert keeper.current(message.id) == message

    # When a third has passed, the lease is renewed and the old receipt is void
    now[0] = 10.0
    keeper.renew_due()
    renewed = keeper.current(message.id)
    assert renewed is not None and renewed.receipt != message.receipt
    with pytest.raises(LeaseLostError):
        queue.ack(message)

    # And finishing the message uses the newest receipt
    assert keeper.finish(message.id, queue.ack)
    assert keeper.held() == [] and queue.depth().messages == 0


def test_a_lease_taken_over_by_another_consumer_is_marked_lost(settings: Settings) -> None:
    from consumer.lease import LeaseKeeper

    # Given a held message whose lease ran out and which another consumer received
    queue = queue_of(settings, "a message")
    [message] = queue.receive(1, visibility_timeout_s=30)
    now = [0.0]
    keeper = LeaseKeeper(queue, 30, clock=lambda: now[0])
    keeper.hold(message)
    queue.release(message)  # what its expiry would do, without waiting for it
    [theirs] = queue.receive(1, visibility_timeout_s=30)

    # When the keeper next tries to renew it
    now[0] = 10.0
    keeper.renew_due()

    # Then it is dropped and marked lost, and can no longer be acked through the keeper
    assert message.id in keeper.lost and keeper.held() == []
    assert not keeper.finish(message.id, queue.ack)
    queue.ack(theirs)  # the new owner still can


@pytest.mark.embedded
def test_credentials_that_may_not_create_queues_still_consume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from workpool.errors import WorkpoolError
    from workpool.queue.embedded import EmbeddedQueue

    class ProcessOnlyQueue(EmbeddedQueue):
        """A queue whose credentials may receive and delete, not create (a scoped SAS)."""

        def create(self) -> None:
            raise WorkpoolError("create queue: request refused (403 AuthorizationPermissionMismatch)")

    # Given a queue the producer created, and a consumer whose credentials could not create it
    settings = load_settings(home=tmp_path / "home", queue="scoped")
    names = write_sample_images(tmp_path / "images", 2, (32, 32))
    queue_of(settings, batch(str(tmp_path / "images"), names))
    scoped = ProcessOnlyQueue(settings.home / "queue.sqlite3", settings.queue)

    # When the consumer starts and drains it
    consumer = Consumer(settings.model_copy(update={"idle_exit_s": 0.5}), "w1", queue=scoped, poll_s=0.05)
    consumer.run()

    # Then the refusal was only a warning, and the batch was scored and acked
    assert consumer.error is None and "assuming it exists" in caplog.text
    assert consumer.images_processed == 2 and scoped.depth().messages == 0


class TimedTask(SleepTask):
    """The example task, noting when each batch's scoring started (in this process)."""

    started: ClassVar[list[float]] = []

    def predict(self, batch: Array) -> Any:
        TimedTask.started.append(time.monotonic())
        return super().predict(batch)


def test_the_next_batch_is_scored_while_the_previous_one_is_written_and_acked(
    settings: Settings, images: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two batches, and a queue whose acks take 1.5 s (a slow store)
    monkeypatch.setenv("WORKPOOL_EXAMPLE_SLEEP_S", "0.05")
    TimedTask.started.clear()
    source, names = images
    task = f"{__name__}:TimedTask"
    queue = queue_of(settings, batch(source, names[:2], "b1", task), batch(source, names[2:], "b2", task))
    consumer = consumer_for(settings, idle_exit_s=0.5)
    acks: list[tuple[float, float]] = []
    real_ack = queue.ack

    def slow_ack(message: Any) -> None:
        began = time.monotonic()
        time.sleep(1.5)
        real_ack(message)
        acks.append((began, time.monotonic()))

    consumer.worker.queue = consumer.queue = queue
    consumer.prefetcher.queue = consumer.leases.queue = queue
    queue.ack = slow_ack  # type: ignore[method-assign]

    # When a consumer drains the queue
    consumer.run()

    # Then the second batch was scored before the first one's ack was done, not after it
    assert consumer.error is None and len(acks) == 2 and len(TimedTask.started) == 2
    _, first_ack_ended = acks[0]
    assert TimedTask.started[0] < TimedTask.started[1] < first_ack_ended
    # And both batches were written, acked and recorded all the same
    assert runs(settings).result_batch_ids("r1") == {"b1", "b2"}
    assert {r.batch_id for r in runs(settings).read_batch_records("r1")} == {"b1", "b2"}
    assert queue.depth().messages == 0


def test_an_unexpected_error_while_finishing_a_batch_stops_the_consumer_with_it(
    settings: Settings, images: tuple[str, list[str]]
) -> None:
    # Given a batch, and a result store whose timing-record write fails with a bug, not an outage
    source, names = images
    queue = queue_of(settings, batch(source, names))
    consumer = consumer_for(settings, idle_exit_s=30)

    def broken_record(record: Any) -> None:
        raise RuntimeError("bug in the record writer")

    consumer.runs.write_batch_record = broken_record  # type: ignore[method-assign]

    # When the consumer runs (it would wait 30 s for more work)
    started = time.monotonic()
    consumer.run()

    # Then the error raised on the finisher thread ends the worker at once and is reported, as one raised
    # while scoring would be (the CLI exits 1); the batch itself was written and acked before it
    assert isinstance(consumer.error, RuntimeError) and "bug in the record writer" in str(consumer.error)
    assert time.monotonic() - started < 25
    assert runs(settings).result_batch_ids("r1") == {"b1"}
    assert queue.depth().messages == 0
