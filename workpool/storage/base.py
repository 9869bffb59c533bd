"""The object-store interface: a flat namespace of named byte strings, each with small metadata.

A local directory and an Azure blob container both implement it. An image source is an object
store read under a prefix; the result store is an object store written in the run layout
(`workpool.runs`). Names use '/' as separator on every backend.

Metadata is a few short ASCII strings per object that a *listing* returns with the names
(`list_info`), so a reader learns what it needs about many objects from one request per page
(Azure blob metadata, up to 5,000 blobs a page) instead of one read per object.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from workpool.errors import WorkpoolError

# Azure's rules for metadata names (C# identifiers; compared case-insensitively, so lower case
# only) and values (HTTP header values: printable ASCII), and its 8 KiB limit for all of them.
_METADATA_NAME = re.compile(r"[a-z_][a-z0-9_]*")
METADATA_MAX_BYTES = 8192


class ObjectExistsError(WorkpoolError):
    """`create` found the name already taken: another writer got there first."""


class ObjectTooLargeError(WorkpoolError):
    """`read_capped` found the object larger than the cap: nothing past the cap was kept."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its name and the metadata written with it (empty when none)."""

    name: str
    metadata: Mapping[str, str] = field(default_factory=dict)


def check_metadata(metadata: Mapping[str, str]) -> None:
    """Raise `ValueError` unless every store can keep `metadata` as given."""
    size = 0
    for key, value in metadata.items():
        if not _METADATA_NAME.fullmatch(key):
            raise ValueError(f"metadata name {key!r}: expected lower-case letters, digits and '_'")
        if not all(" " <= ch <= "~" for ch in value) or value != value.strip():
            raise ValueError(f"metadata {key!r}: expected printable ASCII without surrounding spaces")
        size += len(key) + len(value)
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"metadata is {size} bytes; at most {METADATA_MAX_BYTES} fit")


class ObjectStore(ABC):
    #: How users see this store in messages and errors: a directory path or az://container.
    location: str

    @abstractmethod
    def check(self) -> None:
        """Raise `NotFoundError` (naming the directory or container) when the store is missing."""

    @abstractmethod
    def ensure(self) -> None:
        """Create the directory or container if missing."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Names under `prefix`, sorted by code point (UTF-8 byte order)."""

    @abstractmethod
    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Names under `prefix` with their metadata, sorted like `list`, without reading any object."""

    @abstractmethod
    def list_folders(self, prefix: str) -> Iterator[str]:
        """The distinct next path segments under `prefix` (which ends with '/') that hold objects,
        sorted: `runs/` → `a`, `b` for `runs/a/…` and `runs/b/…`, however many objects each holds."""

    @abstractmethod
    def read(self, name: str) -> bytes:
        """The bytes of `name`; `NotFoundError` when it does not exist."""

    def read_capped(self, name: str, max_bytes: int) -> bytes:
        """`read`, refusing an object over `max_bytes` with `ObjectTooLargeError` (stores override
        this to stop reading at the cap instead of after the whole object)."""
        data = self.read(name)
        if len(data) > max_bytes:
            raise ObjectTooLargeError(too_large(name, len(data), max_bytes))
        return data

    @abstractmethod
    def write(self, name: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        """Store `data` (and `metadata`, see `check_metadata`) under `name` atomically, replacing
        any previous version: a reader sees the old object or the new one, each with its own metadata."""

    @abstractmethod
    def create(self, name: str, data: bytes) -> None:
        """Store `data` under `name` only if nothing is there, atomically: of writers racing on one
        name exactly one succeeds; the others get `ObjectExistsError` and change nothing."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    def reopened(self) -> ObjectStore:
        """An equal store with clients and connections of its own: what a forked worker process
        uses (never the connections it inherited). `NotImplementedError` when it cannot be opened
        again; then the work stays in this process."""
        raise NotImplementedError(f"{self.location} cannot be opened again")

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove `name`; no error when it is already gone."""


def too_large(name: str, size: int, max_bytes: int) -> str:
    return f"{name} is {size} bytes, over the limit of {max_bytes}"
