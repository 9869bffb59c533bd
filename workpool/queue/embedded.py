"""Embedded work queue: one SQLite database (WAL mode), shared by processes on one machine.

Every state change is one short `BEGIN IMMEDIATE` transaction, so many consumer processes can
compete for messages safely: SQLite's write lock serialises them, and a lease is just
`visible_at` in the future plus a fresh random receipt. Dead-lettering is atomic here.
A forgiven delivery (`release(..., count_delivery=False)`) moves one from `dequeue_count` to
`forgiven`, so `dequeue_count` holds the deliveries that count.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from workpool.errors import LeaseLostError, StorageUnavailableError
from workpool.messages import check_size
from workpool.queue.base import MAX_RECEIVE, Depth, PoisonRecord, Received, Removal, WorkQueue, now_iso

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    inserted_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    expires_at REAL,
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    forgiven INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, visible_at);
"""
# Messages looked at per transaction by `remove_where`.
_REMOVE_CHUNK = 1000


def _add_forgiven_column(conn: sqlite3.Connection) -> None:
    """Databases made before `forgiven` existed gain the column (another process may race us to it)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "forgiven" not in columns:
        try:
            conn.execute("ALTER TABLE messages ADD COLUMN forgiven INTEGER NOT NULL DEFAULT 0")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise


class EmbeddedQueue(WorkQueue):
    def __init__(
        self,
        path: Path,
        name: str,
        *,
        busy_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.path = path
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    # --- connection --------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against process crashes in WAL mode, which is what we face.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            _add_forgiven_column(conn)
            self._conn = conn
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a locked or unreadable database becomes a retryable error."""
        with self._lock:
            try:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StorageUnavailableError(f"embedded queue {self.path} unavailable: {exc}") from exc
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                try:
                    conn.execute("COMMIT")
                except sqlite3.OperationalError as exc:
                    conn.execute("ROLLBACK")
                    raise StorageUnavailableError(f"embedded queue {self.path} unavailable: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- contract ------------------------------------------------------------------------
    def create(self) -> None:
        with self._tx():
            pass

    def send(self, bodies: Sequence[str], *, ttl_s: int = -1, delay_s: int = 0) -> None:
        for body in bodies:
            check_size(body)  # Azure's 64 KiB limit, kept here so a run that works here works there
        now = self._clock()
        expires = None if ttl_s == -1 else now + ttl_s
        rows = [(self.name, body, now, now + delay_s, expires) for body in bodies]
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO messages (queue, body, inserted_at, visible_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    def receive(self, max_messages: int = 1, *, visibility_timeout_s: int = 30) -> list[Received]:
        if not 1 <= max_messages <= MAX_RECEIVE:
            raise ValueError(f"max_messages must be 1..{MAX_RECEIVE}")
        now = self._clock()
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM messages WHERE queue = ? AND expires_at IS NOT NULL AND expires_at <= ?",
                (self.name, now),
            )
            rows = conn.execute(
                """UPDATE messages
                   SET visible_at = ?, dequeue_count = dequeue_count + 1,
                       receipt = lower(hex(randomblob(16)))
                   WHERE id IN (SELECT id FROM messages WHERE queue = ? AND visible_at <= ?
                                ORDER BY id LIMIT ?)
                   RETURNING id, receipt, body, dequeue_count, inserted_at, forgiven""",
                (now + visibility_timeout_s, self.name, now, max_messages),
            ).fetchall()
        rows.sort(key=lambda r: r[0])
        return [
            Received(
                id=str(r[0]),
                receipt=r[1],
                body=r[2],
                dequeue_count=r[3],
                inserted_at=datetime.fromtimestamp(r[4], UTC),
                forgiven=r[5],
            )
            for r in rows
        ]

    def _update_lease(self, message: Received, visible_at: float, *, forgive: bool = False) -> str:
        receipt = uuid.uuid4().hex
        forgiving = ", dequeue_count = dequeue_count - 1, forgiven = forgiven + 1" if forgive else ""
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE messages SET visible_at = ?, receipt = ?{forgiving} "
                "WHERE id = ? AND receipt = ? AND queue = ?",
                (visible_at, receipt, int(message.id), message.receipt, self.name),
            )
            if cur.rowcount == 0:
                raise LeaseLostError(f"message {message.id} on {self.name}: receipt is stale or message is gone")
        return receipt

    def renew(self, message: Received, visibility_timeout_s: int) -> Received:
        return message.with_receipt(self._update_lease(message, self._clock() + visibility_timeout_s))

    def release(self, message: Received, delay_s: int = 0, *, count_delivery: bool = True) -> None:
        self._update_lease(message, self._clock() + delay_s, forgive=not count_delivery)

    def _delete_leased(self, conn: sqlite3.Connection, message: Received) -> None:
        cur = conn.execute(
            "DELETE FROM messages WHERE id = ? AND receipt = ? AND queue = ?",
            (int(message.id), message.receipt, self.name),
        )
        if cur.rowcount == 0:
            raise LeaseLostError(f"message {message.id} on {self.name}: receipt is stale or message is gone")

    def ack(self, message: Received) -> None:
        with self._tx() as conn:
            self._delete_leased(conn, message)

    def dead_letter(self, message: Received, reason: str) -> None:
        record = PoisonRecord(
            body=message.body, reason=reason, attempts=message.dequeue_count, dead_lettered_at=now_iso()
        )
        now = self._clock()
        with self._tx() as conn:  # one transaction: the move is atomic here
            self._delete_leased(conn, message)
            conn.execute(
                "INSERT INTO messages (queue, body, inserted_at, visible_at) VALUES (?, ?, ?, ?)",
                (self.poison_name, record.encode(), now, now),
            )

    def depth(self) -> Depth:
        now = self._clock()
        with self._tx() as conn:
            counts = {
                queue: (total, visible)
                for queue, total, visible in conn.execute(
                    """SELECT queue, count(*), sum(visible_at <= ?) FROM messages
                       WHERE queue IN (?, ?) AND (expires_at IS NULL OR expires_at > ?)
                       GROUP BY queue""",
                    (now, self.name, self.poison_name, now),
                ).fetchall()
            }
        total, visible = counts.get(self.name, (0, 0))
        return Depth(
            messages=total, poison=counts.get(self.poison_name, (0, 0))[0], visible=visible, in_flight=total - visible
        )

    def remove_where(self, match: Callable[[str], bool], *, hold_s: int = 300) -> Removal:
        """Walks the queue in chunks of `_REMOVE_CHUNK` messages, one short transaction each, so
        consumers are never locked out for long; nothing needs holding here (`hold_s` unused)."""
        removed = in_flight = 0
        last_id = 0
        while True:
            now = self._clock()
            with self._tx() as conn:
                rows = conn.execute(
                    """SELECT id, body, visible_at FROM messages
                       WHERE queue = ? AND id > ? AND (expires_at IS NULL OR expires_at > ?)
                       ORDER BY id LIMIT ?""",
                    (self.name, last_id, now, _REMOVE_CHUNK),
                ).fetchall()
                doomed = []
                for message_id, body, visible_at in rows:
                    if not match(body):
                        continue
                    if visible_at <= now:
                        doomed.append((message_id,))
                    else:
                        in_flight += 1
                conn.executemany("DELETE FROM messages WHERE id = ?", doomed)
            removed += len(doomed)
            if len(rows) < _REMOVE_CHUNK:
                return Removal(removed=removed, in_flight=in_flight)
            last_id = rows[-1][0]

    def purge(self) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM messages WHERE queue = ?", (self.name,))

    def poison(self) -> EmbeddedQueue:
        return EmbeddedQueue(self.path, self.poison_name, busy_timeout_s=self._busy_timeout_s, clock=self._clock)
