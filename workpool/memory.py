"""In-memory backends mounted on a home folder: how in-process tests select them.

Not a storage mode users can choose: a queue and a store that live in one process's memory
can serve nothing a user runs (the CLI's children, a local pool, cluster nodes each have a
memory of their own). A test mounts them on its settings' `home` for as long as it needs:

    with mounted(settings.home):
        consumer = Consumer(settings, ...)   # open_queue / open_result_store serve memory here

While mounted, `open_queue` and `open_result_store` answer settings with that home (and no
Azure Storage credentials) from memory instead of the embedded files under it; other homes,
child processes and Azure settings are unaffected. Tests may also construct `MemoryQueue` and
`MemoryStore` directly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from workpool.queue.memory import MemoryQueues
from workpool.storage.memory import MemoryStores


@dataclass
class MemoryBackend:
    """The queues and stores served for one home."""

    queues: MemoryQueues = field(default_factory=MemoryQueues)
    stores: MemoryStores = field(default_factory=MemoryStores)


_lock = threading.Lock()
_mounted: dict[Path, MemoryBackend] = {}


@contextmanager
def mounted(home: Path, backend: MemoryBackend | None = None) -> Iterator[MemoryBackend]:
    """Serve `home`'s queues and result stores from memory until the block ends."""
    key = Path(home).absolute()
    backend = backend or MemoryBackend()
    with _lock:
        if key in _mounted:
            raise RuntimeError(f"{key} already has in-memory backends mounted")
        _mounted[key] = backend
    try:
        yield backend
    finally:
        with _lock:
            del _mounted[key]


def mounted_at(home: Path) -> MemoryBackend | None:
    """The backends mounted on `home`, if any (no lookup at all while nothing is mounted)."""
    if not _mounted:
        return None
    with _lock:
        return _mounted.get(Path(home).absolute())
