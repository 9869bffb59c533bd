"""Forgiven deliveries on each backend's own terms (the behaviour itself is in the contract suite)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from workpool.queue.azure import split_forgiven, with_forgiven
from workpool.queue.embedded import EmbeddedQueue


def test_an_embedded_queue_made_before_forgiven_deliveries_existed_gains_the_column(tmp_path: Path) -> None:
    # Given a database in the old schema, with a message already delivered once
    path = tmp_path / "queue.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        """CREATE TABLE messages (
               id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, body TEXT NOT NULL,
               inserted_at REAL NOT NULL, visible_at REAL NOT NULL, expires_at REAL,
               dequeue_count INTEGER NOT NULL DEFAULT 0, receipt TEXT);
           INSERT INTO messages (queue, body, inserted_at, visible_at, dequeue_count)
               VALUES ('work', 'old', 0, 0, 1);"""
    )
    conn.commit()
    conn.close()
    # When a consumer of this version opens it (two at once, as a pool would)
    first, second = EmbeddedQueue(path, "work"), EmbeddedQueue(path, "work")
    second.depth()
    [message] = first.receive(1, visibility_timeout_s=60)
    # Then the old message is there, and a forgiven release works on it
    assert (message.body, message.dequeue_count, message.forgiven) == ("old", 2, 0)
    first.release(message, count_delivery=False)
    [again] = second.receive(1, visibility_timeout_s=60)
    assert (again.dequeue_count, again.forgiven) == (2, 1)
    first.close()
    second.close()


def test_azure_bodies_without_the_marker_are_read_unchanged() -> None:
    for body in ['{"run_id": "r"}', "", "workpool-forgiven:x\nnot a count", "text\nworkpool-forgiven:1\n"]:
        assert split_forgiven(body) == (body, 0)
    assert split_forgiven(with_forgiven('{"a": 1}', 3)) == ('{"a": 1}', 3)
    assert with_forgiven("plain", 0) == "plain"
