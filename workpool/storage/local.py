"""A local directory as an object store. Writes are atomic (temp file, fsync, rename)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from workpool.errors import NotFoundError, StorageUnavailableError
from workpool.messages import unsafe_name_reason
from workpool.storage.base import ObjectStore


class LocalStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.location = str(self.root)

    def _path(self, name: str) -> Path:
        problem = unsafe_name_reason(name)
        if problem:
            raise NotFoundError(f"{name!r} {problem}")
        path = (self.root / name).resolve()
        # Symlinks could still point out of the root; names never may.
        if not path.is_relative_to(self.root.resolve()):
            raise NotFoundError(f"{name!r} resolves outside {self.location}")
        return path

    def check(self) -> None:
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise NotFoundError(f"directory {self.location} {what}")

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        self.check()
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return iter(())
        names = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for filename in filenames:
                if filename.startswith("."):
                    continue  # temp files of in-progress writes, editor droppings
                names.append(filename if rel == "." else f"{rel}/{filename}")
        return iter(sorted(names))

    def read(self, name: str) -> bytes:
        path = self._path(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{name} not found in {self.location}") from None
        except IsADirectoryError:
            raise NotFoundError(f"{name} in {self.location} is a directory") from None

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageUnavailableError(f"cannot write {name} in {self.location}: {exc.strerror}") from exc

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
