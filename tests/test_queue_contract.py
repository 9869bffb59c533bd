"""The work-queue contract, run against every backend (embedded SQLite, in-memory, Azurite).

Each test is one behaviour from the design's queue contract. Expiry is tested with 1-second
visibility timeouts and polling, never long sleeps.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CONTRACT_BACKENDS
from tests.support.queue_worker import drain
from tests.support.waiting import wait_for
from workpool.errors import LeaseLostError
from workpool.messages import MAX_MESSAGE_BYTES, encoded_size
from workpool.queue import MAX_RECEIVE, PoisonRecord, WorkQueue, open_queue
from workpool.settings import Settings


@pytest.fixture(params=CONTRACT_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def queue(settings: Settings) -> Iterator[WorkQueue]:
    q = open_queue(settings)
    q.create()
    yield q
    q.close()


def test_sent_message_is_received_with_its_body_and_first_dequeue(queue: WorkQueue) -> None:
    queue.send(["hello ✓ – ünïcode"])
    [message] = queue.receive(1, visibility_timeout_s=30)
    assert message.body == "hello ✓ – ünïcode"
    assert message.dequeue_count == 1
    assert message.id and message.receipt


def test_receive_on_an_empty_queue_returns_nothing(queue: WorkQueue) -> None:
    assert queue.receive(MAX_RECEIVE, visibility_timeout_s=30) == []


def test_receive_returns_at_most_32_and_refuses_more(queue: WorkQueue) -> None:
    queue.send([f"m{i}" for i in range(40)])
    first = queue.receive(MAX_RECEIVE, visibility_timeout_s=30)
    assert len(first) == MAX_RECEIVE
    assert len({m.id for m in first}) == MAX_RECEIVE
    with pytest.raises(ValueError):
        queue.receive(MAX_RECEIVE + 1)
    rest = queue.receive(MAX_RECEIVE, visibility_timeout_s=30)
    assert sorted(m.body for m in first + rest) == sorted(f"m{i}" for i in range(40))


def test_a_leased_message_is_invisible_to_other_consumers(queue: WorkQueue) -> None:
    queue.send(["only"])
    assert len(queue.receive(1, visibility_timeout_s=30)) == 1
    assert queue.receive(1, visibility_timeout_s=30) == []


def test_an_expired_lease_redelivers_with_dequeue_count_plus_one(queue: WorkQueue) -> None:
    queue.send(["comes back"])
    [first] = queue.receive(1, visibility_timeout_s=1)
    [again] = wait_for(lambda: queue.receive(1, visibility_timeout_s=30), timeout_s=6, what="redelivery")
    assert again.body == "comes back"
    assert again.id == first.id
    assert again.dequeue_count == first.dequeue_count + 1


def test_renew_extends_the_lease(queue: WorkQueue) -> None:
    queue.send(["held"])
    [message] = queue.receive(1, visibility_timeout_s=1)
    renewed = queue.renew(message, visibility_timeout_s=10)
    time.sleep(2.2)  # past the original 1 s lease (Azure counts whole seconds)
    assert queue.receive(1, visibility_timeout_s=30) == []
    queue.ack(renewed)
    assert queue.depth().messages == 0


def test_renew_returns_a_new_receipt_and_the_old_one_can_no_longer_ack(queue: WorkQueue) -> None:
    queue.send(["x"])
    [message] = queue.receive(1, visibility_timeout_s=30)
    renewed = queue.renew(message, visibility_timeout_s=30)
    assert renewed.receipt != message.receipt
    with pytest.raises(LeaseLostError):
        queue.ack(message)
    queue.ack(renewed)


def test_ack_deletes_the_message_for_good(queue: WorkQueue) -> None:
    queue.send(["done"])
    [message] = queue.receive(1, visibility_timeout_s=1)
    queue.ack(message)
    time.sleep(1.5)
    assert queue.receive(1, visibility_timeout_s=30) == []
    assert queue.depth().messages == 0


def test_a_stale_receipt_cannot_ack_after_redelivery(queue: WorkQueue) -> None:
    queue.send(["raced"])
    [first] = queue.receive(1, visibility_timeout_s=1)
    [second] = wait_for(lambda: queue.receive(1, visibility_timeout_s=30), timeout_s=6, what="redelivery")
    with pytest.raises(LeaseLostError):
        queue.ack(first)
    queue.ack(second)


def test_release_makes_the_message_visible_at_once(queue: WorkQueue) -> None:
    queue.send(["again"])
    [message] = queue.receive(1, visibility_timeout_s=60)
    queue.release(message)
    [back] = queue.receive(1, visibility_timeout_s=30)
    assert back.body == "again"
    assert back.dequeue_count == 2


def test_release_with_a_delay_hides_the_message_until_it_passes(queue: WorkQueue) -> None:
    queue.send(["later"])
    [message] = queue.receive(1, visibility_timeout_s=60)
    queue.release(message, delay_s=2)
    assert queue.receive(1, visibility_timeout_s=30) == []
    [back] = wait_for(lambda: queue.receive(1, visibility_timeout_s=30), timeout_s=6, what="delayed release")
    assert back.body == "later"


def test_a_forgiven_release_comes_back_at_once_without_counting_the_delivery(queue: WorkQueue) -> None:
    # Given a message delivered twice (one ordinary release)
    queue.send(["preempted"])
    queue.release(queue.receive(1, visibility_timeout_s=60)[0])
    [second] = queue.receive(1, visibility_timeout_s=60)
    assert (second.dequeue_count, second.forgiven) == (2, 0)
    # When its consumer gives it back through no fault of its own (a preempted VM)
    queue.release(second, count_delivery=False)
    # Then it is visible at once, with the same count of deliveries and its body intact
    [third] = queue.receive(1, visibility_timeout_s=60)
    assert (third.body, third.dequeue_count, third.forgiven) == ("preempted", 2, 1)
    # And a renew keeps that, while the next ordinary release counts again
    third = queue.renew(third, visibility_timeout_s=60)
    queue.release(third, count_delivery=False)
    queue.release(queue.receive(1, visibility_timeout_s=60)[0])
    [fifth] = queue.receive(1, visibility_timeout_s=60)
    assert (fifth.body, fifth.dequeue_count, fifth.forgiven) == ("preempted", 3, 2)


def test_a_forgiven_release_with_a_stale_receipt_is_refused(queue: WorkQueue) -> None:
    queue.send(["x"])
    [message] = queue.receive(1, visibility_timeout_s=60)
    renewed = queue.renew(message, visibility_timeout_s=60)
    with pytest.raises(LeaseLostError):
        queue.release(message, count_delivery=False)
    queue.ack(renewed)


def test_a_forgiven_message_is_dead_lettered_with_its_original_body(queue: WorkQueue) -> None:
    queue.send(['{"batch": "b1"}'])
    queue.release(queue.receive(1, visibility_timeout_s=60)[0], count_delivery=False)
    [message] = queue.receive(1, visibility_timeout_s=60)
    queue.dead_letter(message, "broken")
    [poisoned] = queue.poison().receive(1, visibility_timeout_s=30)
    record = PoisonRecord.decode(poisoned.body)
    assert (record.body, record.attempts) == ('{"batch": "b1"}', 1)


def test_a_forgiven_release_of_a_message_at_the_size_limit_loses_nothing(queue: WorkQueue) -> None:
    body = json.dumps({"images": ["a" * 100] * 10})
    body = body + " " * (MAX_MESSAGE_BYTES - encoded_size(body))
    queue.send([body])
    queue.release(queue.receive(1, visibility_timeout_s=60)[0], count_delivery=False)
    [back] = queue.receive(1, visibility_timeout_s=60)
    assert back.body == body
    assert back.dequeue_count <= 2  # Azure has no room to mark it forgiven: then it is counted


def test_dead_letter_moves_the_message_to_poison_with_reason_and_attempts(queue: WorkQueue) -> None:
    queue.send(["bad"])
    queue.release(queue.receive(1, visibility_timeout_s=30)[0])
    [message] = queue.receive(1, visibility_timeout_s=30)
    queue.dead_letter(message, "cannot decode")
    assert queue.receive(1, visibility_timeout_s=30) == []
    assert queue.depth().poison == 1
    [poisoned] = queue.poison().receive(1, visibility_timeout_s=30)
    record = PoisonRecord.decode(poisoned.body)
    assert (record.body, record.reason, record.attempts) == ("bad", "cannot decode", 2)


def test_depth_counts_in_flight_messages_and_the_poison_queue(queue: WorkQueue) -> None:
    queue.send(["a", "b", "c"])
    leased = queue.receive(2, visibility_timeout_s=30)
    queue.dead_letter(leased[0], "test")
    depth = wait_for(lambda: (d := queue.depth()).messages == 2 and d.poison == 1 and d, timeout_s=5, what="depth")
    assert (depth.messages, depth.poison) == (2, 1)


def test_depth_tells_visible_messages_from_those_in_flight(queue: WorkQueue) -> None:
    # Given five messages, two of them leased and one released with a delay
    queue.send([f"m{i}" for i in range(5)])
    leased = queue.receive(3, visibility_timeout_s=30)
    queue.release(leased[2], delay_s=30)
    # Then two are visible (a receive could take them) and three are in flight, of five
    depth = wait_for(lambda: (d := queue.depth()).messages == 5 and d, timeout_s=5, what="depth")
    assert (depth.visible, depth.in_flight) == (2, 3)
    # And once the leased ones are acked and the rest taken, nothing is visible
    for message in leased[:2]:
        queue.ack(message)
    taken = queue.receive(2, visibility_timeout_s=30)
    depth = wait_for(lambda: (d := queue.depth()).messages == 3 and d, timeout_s=5, what="depth after acks")
    assert (depth.visible, depth.in_flight) == (0, 3)
    for message in taken:
        queue.ack(message)
    depth = wait_for(lambda: (d := queue.depth()).messages == 1 and d, timeout_s=5, what="depth after all acks")
    assert (depth.visible, depth.in_flight) == (0, 1)


def test_purge_empties_the_queue_but_not_its_poison(queue: WorkQueue) -> None:
    queue.send(["p1", "p2", "p3"])
    queue.dead_letter(queue.receive(1, visibility_timeout_s=30)[0], "kept")
    queue.purge()
    assert queue.receive(MAX_RECEIVE, visibility_timeout_s=30) == []
    assert queue.depth().messages == 0
    assert queue.depth().poison == 1


def test_a_message_at_the_64_kib_limit_round_trips(queue: WorkQueue) -> None:
    body = json.dumps({"images": ["é" * 100] * 10})
    body = body + " " * (MAX_MESSAGE_BYTES - encoded_size(body))
    assert encoded_size(body) == MAX_MESSAGE_BYTES
    queue.send([body])
    [message] = queue.receive(1, visibility_timeout_s=30)
    assert message.body == body


def test_many_concurrent_sends_all_arrive_once(queue: WorkQueue) -> None:
    bodies = [f"n{i:03d}" for i in range(100)]
    queue.send(bodies)
    seen: list[str] = []
    while batch := queue.receive(MAX_RECEIVE, visibility_timeout_s=30):
        seen += [m.body for m in batch]
    assert sorted(seen) == bodies


def test_a_message_with_a_time_to_live_expires(queue: WorkQueue) -> None:
    queue.send(["fleeting"], ttl_s=1)
    queue.send(["forever"])
    time.sleep(2.2)
    bodies = [m.body for m in queue.receive(MAX_RECEIVE, visibility_timeout_s=30)]
    assert bodies == ["forever"]


def test_create_is_idempotent(queue: WorkQueue) -> None:
    queue.send(["kept"])
    queue.create()
    assert [m.body for m in queue.receive(1, visibility_timeout_s=30)] == ["kept"]


@pytest.mark.slow
# Not on "memory": its messages live in this process, and processes compete for them here.
@pytest.mark.parametrize("backend", [b for b in CONTRACT_BACKENDS if b != "memory"])
def test_four_processes_compete_for_200_messages_and_each_is_taken_once(settings: Settings, tmp_path: Path) -> None:
    queue = open_queue(settings)
    queue.create()
    bodies = [f"job-{i:03d}" for i in range(200)]
    queue.send(bodies)
    flags = {"home": settings.home, "queue": settings.queue, "results": settings.results}
    if settings.connection_string is not None:
        flags["connection_string"] = settings.connection_string.get_secret_value()
    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"acked-{i}.json" for i in range(4)]
    start = ctx.Barrier(len(outs))
    procs = [ctx.Process(target=drain, args=(flags, str(out), start)) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    per_process = [json.loads(out.read_text()) for out in outs]
    everything = [body for acked in per_process for body in acked]
    assert sorted(everything) == bodies  # none lost, none taken twice
    assert all(per_process)  # every process got a share: they really competed
    assert queue.depth().messages == 0
