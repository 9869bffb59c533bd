"""An Azure blob container as an object store (Azure and Azurite alike)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient

from workpool.azure_clients import azure_errors, error_code
from workpool.errors import NotFoundError
from workpool.storage.base import ObjectStore


class BlobStore(ObjectStore):
    def __init__(self, service: BlobServiceClient, container: str) -> None:
        self.container = container
        self.location = f"az://{container}"
        self._client: ContainerClient = service.get_container_client(container)

    def check(self) -> None:
        with azure_errors(f"container {self.container}"):
            if not self._client.exists():
                raise NotFoundError(f"container {self.container} does not exist")

    def ensure(self) -> None:
        with azure_errors(f"create container {self.container}"), contextlib.suppress(ResourceExistsError):
            self._client.create_container()

    def list(self, prefix: str = "") -> Iterator[str]:
        with azure_errors(f"list {self.location}/{prefix}"):
            try:
                names = [b for b in self._client.list_blob_names(name_starts_with=prefix or None)]
            except ResourceNotFoundError:
                raise NotFoundError(f"container {self.container} does not exist") from None
        return iter(sorted(names))

    def read(self, name: str) -> bytes:
        with azure_errors(f"read {self.location}/{name}"):
            try:
                return self._client.download_blob(name).readall()
            except ResourceNotFoundError as exc:
                if error_code(exc) == "ContainerNotFound":
                    raise NotFoundError(f"container {self.container} does not exist") from None
                raise NotFoundError(f"{name} not found in {self.location}") from None

    def write(self, name: str, data: bytes) -> None:
        # A single Put Blob replaces the blob atomically: readers see the old or the new one.
        with azure_errors(f"write {self.location}/{name}"):
            try:
                self._client.upload_blob(name, data, overwrite=True)
            except ResourceNotFoundError:
                raise NotFoundError(f"container {self.container} does not exist") from None

    def exists(self, name: str) -> bool:
        with azure_errors(f"stat {self.location}/{name}"):
            return bool(self._client.get_blob_client(name).exists())

    def delete(self, name: str) -> None:
        with azure_errors(f"delete {self.location}/{name}"), contextlib.suppress(ResourceNotFoundError):
            self._client.delete_blob(name)
