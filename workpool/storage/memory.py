"""In-memory object store: the store contract in one process's memory, for fast in-process tests.

Like huey's memory storage: nothing leaves the process, so it serves the roles running in the
test's own process, never a child process (`reopened` refuses). It keeps the contract the other
stores keep (`tests/test_storage.py` runs on it): names sorted by code point, metadata checked
and returned by listings, atomic replace, create-if-absent with exactly one winner, a missing
store named in its error. One lock serialises every operation.

A `MemoryStores` holds a set of named stores (what a storage account's blob service holds);
`workpool.memory` mounts one on a home folder, so `open_result_store` serves it there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from workpool.errors import NotFoundError
from workpool.storage.base import ObjectExistsError, ObjectInfo, ObjectStore, check_metadata


class MemoryStores:
    """Named stores in memory; opening a name again gives the same objects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, MemoryStore] = {}

    def store(self, name: str) -> MemoryStore:
        with self._lock:
            return self._stores.setdefault(name, MemoryStore(name))


class MemoryStore(ObjectStore):
    def __init__(self, name: str) -> None:
        self.location = f"memory://{name}"
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self._exists = False

    def check(self) -> None:
        with self._lock:
            if not self._exists:
                raise NotFoundError(f"store {self.location} does not exist")

    def ensure(self) -> None:
        with self._lock:
            self._exists = True

    def _snapshot(self, prefix: str) -> list[tuple[str, dict[str, str]]]:
        self.check()
        with self._lock:
            return sorted((n, meta) for n, (_, meta) in self._objects.items() if n.startswith(prefix))

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter([name for name, _ in self._snapshot(prefix)])

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter([ObjectInfo(name, dict(meta)) for name, meta in self._snapshot(prefix)])

    def list_folders(self, prefix: str) -> Iterator[str]:
        rests = (name[len(prefix) :] for name, _ in self._snapshot(prefix))
        return iter(sorted({rest.split("/", 1)[0] for rest in rests if "/" in rest}))

    def read(self, name: str) -> bytes:
        with self._lock:
            found = self._objects.get(name)
        if found is None:
            raise NotFoundError(f"{name} not found in {self.location}")
        return found[0]

    def write(self, name: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        if metadata:
            check_metadata(metadata)
        with self._lock:
            self._exists = True
            self._objects[name] = (bytes(data), dict(metadata or {}))

    def create(self, name: str, data: bytes) -> None:
        with self._lock:
            if name in self._objects:
                raise ObjectExistsError(f"{name} already exists in {self.location}")
            self._exists = True
            self._objects[name] = (bytes(data), {})

    def exists(self, name: str) -> bool:
        with self._lock:
            return name in self._objects

    def delete(self, name: str) -> None:
        with self._lock:
            self._objects.pop(name, None)
