"""Object stores (local directory, blob container) and the factories that open them.

Source URIs, used for image sources and model or label files:
- `az://<container>/<prefix>`: a blob container (prefix optional), on the configured account;
- anything else: a local path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from workpool.errors import UsageError
from workpool.settings import Settings
from workpool.storage.base import ObjectStore
from workpool.storage.local import LocalStore, ensure_home

__all__ = [
    "LocalStore",
    "Location",
    "ObjectStore",
    "ensure_home",
    "open_location",
    "open_result_store",
    "parse_location",
]

AZ_SCHEME = "az://"


@dataclass(frozen=True)
class Location:
    """A parsed URI: a store (container or directory) plus a prefix inside it."""

    container: str | None  # None: local filesystem
    path: str  # blob prefix, or the local directory or file path

    @property
    def is_blob(self) -> bool:
        return self.container is not None

    def uri(self) -> str:
        if self.container is None:
            return self.path
        return f"{AZ_SCHEME}{self.container}/{self.path}" if self.path else f"{AZ_SCHEME}{self.container}"


def parse_location(uri: str) -> Location:
    if uri.startswith(AZ_SCHEME):
        container, _, prefix = uri[len(AZ_SCHEME) :].partition("/")
        if not container:
            raise UsageError(f"{uri!r}: expected az://<container>/<prefix>")
        return Location(container=container, path=prefix)
    if "://" in uri:
        raise UsageError(f"{uri!r}: expected a local path or az://<container>/<prefix>")
    return Location(container=None, path=str(Path(uri).absolute()))


def blob_store(settings: Settings, container: str) -> ObjectStore:
    if not settings.uses_azure_storage:
        raise UsageError(
            f"az://{container} needs Azure Storage: set AZURE_STORAGE_CONNECTION_STRING or WORKPOOL_ACCOUNT_URL"
        )
    from workpool.azure_clients import blob_service
    from workpool.storage.blob import BlobStore

    return BlobStore(blob_service(settings), container, functools.partial(blob_service, settings))


def open_location(settings: Settings, uri: str) -> tuple[ObjectStore, str]:
    """The store holding `uri` and the prefix inside it (for a directory: the directory itself)."""
    loc = parse_location(uri)
    if loc.container is not None:
        return blob_store(settings, loc.container), loc.path
    return LocalStore(Path(loc.path)), ""


def open_result_store(settings: Settings) -> ObjectStore:
    """The result store: the `WORKPOOL_RESULTS` container on Azure, else `<home>/results` (or
    the in-memory store a test mounted on the home: `workpool.memory`)."""
    if settings.uses_azure_storage:
        return blob_store(settings, settings.results)
    from workpool.memory import mounted_at

    if (memory := mounted_at(settings.home)) is not None:
        return memory.stores.store(settings.results)
    return LocalStore(ensure_home(settings.home) / "results")
