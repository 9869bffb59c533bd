"""The one stop path, in process: `Consumer.give_back` for shutdown, scale-in and preemption.

Every way a consumer stops gives its batches back through `give_back(count_delivery, finish_s)`;
these stories drive it directly on a real queue (both backends) with the model-free task.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from consumer.runner import STOP_GRACE_S, Consumer
from tests.conftest import IN_PROCESS_BACKENDS
from tests.support.images import stage_folder, write_sample_images
from tests.support.waiting import wait_for
from tests.test_consumer_worker import batch, consumer_for, queue_of
from workpool.queue import Received
from workpool.settings import Settings

# Seconds per image: a batch still being scored when the test stops the consumer, and scored for
# longer than the consumer waits for its worker thread (STOP_GRACE_S).
SLOW_S = 6.0


@pytest.fixture(params=IN_PROCESS_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def images(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[str]]:
    monkeypatch.setenv("WORKPOOL_EXAMPLE_SLEEP_S", str(SLOW_S))
    names = write_sample_images(tmp_path / "images", 2, (32, 32))
    return stage_folder(settings, tmp_path / "images"), names


def let_it_end(consumer: Consumer) -> None:
    """The abandoned scoring call ends on its own: wait for it, so no thread outlives the test."""
    thread = consumer._worker_thread
    if thread is not None:
        thread.join(SLOW_S * 4)


def test_give_back_releases_the_batch_in_hand_and_the_prefetched_ones_at_once(
    settings: Settings, images: tuple[str, list[str]]
) -> None:
    # Given a consumer scoring one slow batch with a second one prefetched, under 60 s leases
    source, names = images
    queue = queue_of(settings, batch(source, names[:1], "b1"), batch(source, names[1:2], "b2"))
    consumer = consumer_for(settings, visibility_timeout_s=60, prefetch_batches=1)
    consumer.start()
    try:
        wait_for(lambda: len(consumer.leases.held()) == 2, timeout_s=60, what="one batch scored, one prefetched")

        # When it gives them back (a counted stop: SIGTERM)
        released = consumer.give_back(count_delivery=True)

        # Then both are visible again at once, each delivery counted, and nothing is held
        # (the prefetch thread may have given its own batch back itself, having seen the stop
        # as it finished preparing it: then this call released one)
        assert released in (1, 2)
        assert consumer.leases.held() == []
        again: list[Received] = []

        def both_back() -> bool:  # a receive may return fewer messages than are visible (Azure)
            again.extend(queue.receive(2 - len(again), visibility_timeout_s=30))
            return len(again) == 2

        wait_for(both_back, timeout_s=10, what="both batches to be visible again")
        assert sorted(m.dequeue_count for m in again) == [2, 2]
    finally:
        consumer.shutdown()  # what the CLI does next: also closes the decode pool
        let_it_end(consumer)


def test_a_preemption_gives_back_uncounted_and_a_later_shutdown_counts_nothing_either(
    settings: Settings, images: tuple[str, list[str]]
) -> None:
    # Given a consumer scoring a slow batch
    source, names = images
    queue = queue_of(settings, batch(source, names[:1]))
    consumer = consumer_for(settings, visibility_timeout_s=60, prefetch_batches=0)
    consumer.start()
    wait_for(lambda: consumer.leases.held(), timeout_s=60, what="the consumer to take the batch")

    # When a preemption notice gives everything back, and the consumer then shuts down
    assert consumer.give_back(count_delivery=False) == 1
    consumer.shutdown()

    # Then the delivery is forgiven: the batch comes back as if never delivered
    [message] = queue.receive(1, visibility_timeout_s=30)
    assert message.dequeue_count == 1
    let_it_end(consumer)


def test_a_preemption_cuts_short_the_wait_for_the_batch_in_hand(
    settings: Settings, images: tuple[str, list[str]]
) -> None:
    # Given a node of an autoscaled pool (it finishes its batch on scale-in, for up to 120 s)
    # scoring a slow batch, and told to stop (a scale-in)
    source, names = images
    queue = queue_of(settings, batch(source, names[:1]))
    consumer = consumer_for(settings, visibility_timeout_s=60, prefetch_batches=0, stop_finish_s=120)
    consumer.start()
    wait_for(lambda: consumer.leases.held(), timeout_s=60, what="the consumer to take the batch")
    shutdown = threading.Thread(target=consumer.shutdown)
    shutdown.start()
    wait_for(lambda: consumer.stop_event.is_set(), what="the scale-in to begin")
    assert consumer.leases.held(), "the batch in hand is being finished, not released"

    # When a preemption notice arrives meanwhile (from the watcher's thread)
    consumer.give_back(count_delivery=False)
    shutdown.join(STOP_GRACE_S * 10)

    # Then the wait ends: the batch was not finished but given back, uncounted, by whichever of
    # the two calls came first (had the scale-in gone on waiting, it would have been scored and
    # acked: the queue would be empty)
    assert not shutdown.is_alive()
    assert consumer.leases.held() == []
    [message] = queue.receive(1, visibility_timeout_s=30)
    assert message.dequeue_count == 1
    let_it_end(consumer)
