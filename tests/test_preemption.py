"""Preemption notices: the watcher against a local Scheduled Events server, and the settings.

The end-to-end story (a consumer process gives its batches back at once, uncounted) is in
tests/test_preemption_consumer.py.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import pytest

from consumer.preemption import PreemptionWatcher, ScheduledEvent, parse_events
from tests.support.scheduled_events import ScheduledEventsServer
from tests.support.waiting import wait_for
from workpool.errors import SettingsError
from workpool.handoff import child_env, node_environment
from workpool.settings import SCHEDULED_EVENTS_URL, load_settings


@pytest.fixture
def imds() -> Iterator[ScheduledEventsServer]:
    server = ScheduledEventsServer("spotvm-7").start()
    yield server
    server.stop()


def watcher_for(server: ScheduledEventsServer, notices: list[ScheduledEvent]) -> PreemptionWatcher:
    return PreemptionWatcher(server.url, notices.append, poll_s=0.05)


def test_a_real_shaped_document_is_parsed_and_malformed_entries_are_skipped() -> None:
    document = {
        "DocumentIncarnation": 4,
        "Events": [
            {
                "EventId": "602d9444-d2cd-49c7-8624-8643e7171297",
                "EventType": "Preempt",
                "ResourceType": "VirtualMachine",
                "Resources": ["spotvm-7"],
                "EventStatus": "Scheduled",
                "NotBefore": "Mon, 30 Nov 2026 21:40:07 GMT",
                "Description": "",
                "EventSource": "Platform",
                "DurationInSeconds": -1,
            },
            "not an event",
            {"EventId": "x", "EventType": "Freeze", "Resources": "not a list"},
        ],
    }
    [event] = parse_events(document)
    assert (event.event_type, event.resources, event.status) == ("Preempt", ("spotvm-7",), "Scheduled")
    assert event.concerns({"SPOTVM-7"}) and not event.concerns({"spotvm-70"})
    assert parse_events({"DocumentIncarnation": 1, "Events": []}) == []
    with pytest.raises(ValueError):
        parse_events({"error": "Bad request"})


def test_only_a_preempt_or_terminate_for_this_vm_fires_and_only_once(imds: ScheduledEventsServer) -> None:
    notices: list[ScheduledEvent] = []
    watcher = watcher_for(imds, notices)
    # Given nothing scheduled, a reboot of this VM, and a preemption of another VM
    watcher.tick()
    imds.announce("Reboot")
    imds.announce("Freeze")
    imds.announce("Preempt", resources=["spotvm-8"])
    watcher.tick()
    assert notices == []
    # When this VM's preemption is announced
    event_id = imds.announce("Preempt")
    watcher.tick()
    watcher.tick()
    # Then the notice fires once, for that event; the VM's name came from the metadata service
    assert [n.event_id for n in notices] == [event_id]
    assert "spotvm-7" in watcher.names
    # And every request carried the header the metadata service requires, and nothing was POSTed
    assert imds.requests and all(header == "true" for _, header in imds.requests)
    assert {path for path, _ in imds.requests} == {"/metadata/scheduledevents", "/metadata/instance/compute/name"}


def test_a_terminate_fires_too_and_a_withdrawn_notice_is_noticed(imds: ScheduledEventsServer) -> None:
    notices: list[ScheduledEvent] = []
    watcher = watcher_for(imds, notices)
    imds.announce("Terminate")
    watcher.tick()
    assert [n.event_type for n in notices] == ["Terminate"]
    imds.clear()
    watcher.tick()
    assert watcher.withdrawn and len(notices) == 1


def test_an_endpoint_that_is_down_or_garbled_is_tolerated_and_mentioned_once(
    imds: ScheduledEventsServer, caplog: pytest.LogCaptureFixture
) -> None:
    notices: list[ScheduledEvent] = []
    garbled = PreemptionWatcher(imds.url, notices.append, fetch=lambda url: b"<html>proxy error</html>")
    garbled.tick()
    url = imds.url
    imds.stop()  # the endpoint goes away for real
    down = PreemptionWatcher(url, notices.append)
    with caplog.at_level(logging.WARNING, logger="consumer.preemption"):
        for _ in range(3):
            down.tick()
    assert notices == []
    warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 2  # one for each watcher, not one per poll
    assert "JSONDecodeError" in warnings[0] and "refused" in warnings[1]


def test_the_thread_polls_until_stopped(imds: ScheduledEventsServer) -> None:
    notices: list[ScheduledEvent] = []
    watcher = watcher_for(imds, notices)
    stop = threading.Event()
    thread = watcher.start(stop)
    imds.announce("Preempt")
    wait_for(lambda: notices, timeout_s=5, what="the notice")
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_cluster_nodes_watch_the_metadata_service_and_this_machine_does_not_by_default() -> None:
    settings = load_settings(queue="spot")
    assert settings.scheduled_events_url is None
    assert node_environment(settings).plain["WORKPOOL_SCHEDULED_EVENTS_URL"] == SCHEDULED_EVENTS_URL
    assert "WORKPOOL_SCHEDULED_EVENTS_URL" not in child_env(settings)
    mine = load_settings(queue="spot", scheduled_events_url="http://127.0.0.1:8080/events")
    assert node_environment(mine).plain["WORKPOOL_SCHEDULED_EVENTS_URL"] == "http://127.0.0.1:8080/events"
    assert child_env(mine)["WORKPOOL_SCHEDULED_EVENTS_URL"] == "http://127.0.0.1:8080/events"


@pytest.mark.parametrize("url", ["http://metadata.example.com/events", "ftp://127.0.0.1/x", "not a url"])
def test_a_scheduled_events_url_that_is_not_safe_http_is_a_settings_error(url: str) -> None:
    with pytest.raises(SettingsError, match="WORKPOOL_SCHEDULED_EVENTS_URL"):
        load_settings(scheduled_events_url=url)


def test_the_metadata_service_address_is_accepted_over_plain_http() -> None:
    assert load_settings(scheduled_events_url=SCHEDULED_EVENTS_URL).scheduled_events_url == SCHEDULED_EVENTS_URL
    assert json.loads(json.dumps(SCHEDULED_EVENTS_URL)).startswith("http://169.254.169.254/")
