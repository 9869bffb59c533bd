"""The object-store interface: a flat namespace of named byte strings.

A local directory and an Azure blob container both implement it. An image source is an object
store read under a prefix; the result store is an object store written in the run layout
(`workpool.runs`). Names use '/' as separator on every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator


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
    def read(self, name: str) -> bytes:
        """The bytes of `name`; `NotFoundError` when it does not exist."""

    @abstractmethod
    def write(self, name: str, data: bytes) -> None:
        """Store `data` under `name` atomically, replacing any previous version."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove `name`; no error when it is already gone."""
