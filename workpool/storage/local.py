"""A local directory as an object store. Writes are atomic (temp file, fsync, rename).

Metadata lives in an append-only index per directory (`.workpool-index.jsonl`, hidden from
listings): one line per write that carried metadata, naming the object and the fingerprint
(inode, size, modification time) of the very file that write put in place. A listing reads one
index per directory and trusts a line only while the file still has that fingerprint, so a
crash between the index line and the rename, a torn last line, or a later write without
metadata can never pair an object with metadata that is not its own: the object is then
simply listed without metadata.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from workpool.errors import NotFoundError, SettingsError, StorageUnavailableError
from workpool.messages import unsafe_name_reason
from workpool.storage.base import (
    ObjectExistsError,
    ObjectInfo,
    ObjectStore,
    ObjectTooLargeError,
    check_metadata,
    too_large,
)

INDEX = ".workpool-index.jsonl"
HOME_MODE = 0o700
Fingerprint = tuple[int, int, int]


def _fingerprint(st: os.stat_result) -> Fingerprint:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class LocalStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.location = str(self.root)

    @functools.cached_property
    def _resolved_root(self) -> Path:
        # Resolved once: resolving it on every read was a third of a small image's cost.
        return self.root.resolve()

    def _path(self, name: str) -> Path:
        problem = unsafe_name_reason(name)
        if problem:
            raise NotFoundError(f"{name!r} {problem}")
        path = (self.root / name).resolve()
        # Symlinks could still point out of the root; names never may.
        if not path.is_relative_to(self._resolved_root):
            raise NotFoundError(f"{name!r} resolves outside {self.location}")
        return path

    def check(self) -> None:
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise NotFoundError(f"directory {self.location} {what}")

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(name for _, _, name in self._walk(prefix)))

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        infos = []
        indexes: dict[str, dict[tuple[str, Fingerprint], dict[str, str]]] = {}
        for dirpath, filename, name in self._walk(prefix):
            if dirpath not in indexes:
                indexes[dirpath] = _read_index(Path(dirpath))
            metadata: Mapping[str, str] = {}
            if indexes[dirpath]:
                with contextlib.suppress(OSError):  # deleted meanwhile: listed without metadata
                    fingerprint = _fingerprint(os.stat(os.path.join(dirpath, filename)))
                    metadata = indexes[dirpath].get((filename, fingerprint), {})
            infos.append(ObjectInfo(name, metadata))
        return iter(sorted(infos, key=lambda info: info.name))

    def list_folders(self, prefix: str) -> Iterator[str]:
        self.check()
        base = self.root / prefix
        if not base.is_dir():
            return iter(())
        return iter(sorted(e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith(".")))

    def _walk(self, prefix: str) -> Iterator[tuple[str, str, str]]:
        """(directory, file name, object name) of every object under `prefix`."""
        self.check()
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for filename in filenames:
                if filename.startswith("."):
                    continue  # temp files of in-progress writes, the metadata index, editor droppings
                yield dirpath, filename, (filename if rel == "." else f"{rel}/{filename}")

    def read(self, name: str) -> bytes:
        return self._read(name, None)

    def read_capped(self, name: str, max_bytes: int) -> bytes:
        return self._read(name, max_bytes)

    def _read(self, name: str, max_bytes: int | None) -> bytes:
        try:
            return read_regular_file(self._path(name), max_bytes, name)
        except FileNotFoundError:
            raise NotFoundError(f"{name} not found in {self.location}") from None
        except IsADirectoryError:
            raise NotFoundError(f"{name} in {self.location} is a directory") from None

    def write(self, name: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        if metadata:
            check_metadata(metadata)
        path = self._path(name)
        try:
            with self._staged(path, data) as (tmp, fingerprint):
                if metadata:
                    # Indexed before the rename: a reader never sees the new file without its line.
                    _append_index(path.parent, path.name, fingerprint, metadata)
                os.replace(tmp, path)
        except OSError as exc:
            raise StorageUnavailableError(f"cannot write {name} in {self.location}: {exc.strerror}") from exc

    def create(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            with self._staged(path, data) as (tmp, _):
                # A hard link is made whole or not at all, and never over an existing name.
                os.link(tmp, path)
        except FileExistsError:
            raise ObjectExistsError(f"{name} already exists in {self.location}") from None
        except OSError as exc:
            raise StorageUnavailableError(f"cannot create {name} in {self.location}: {exc.strerror}") from exc

    @contextlib.contextmanager
    def _staged(self, path: Path, data: bytes) -> Iterator[tuple[str, Fingerprint]]:
        """A durable temp file beside `path` holding `data`, removed afterwards unless renamed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                fingerprint = _fingerprint(os.fstat(f.fileno()))
            yield tmp, fingerprint
        finally:
            Path(tmp).unlink(missing_ok=True)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def reopened(self) -> LocalStore:
        return LocalStore(self.root)

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)


def _append_index(directory: Path, leaf: str, fingerprint: Fingerprint, metadata: Mapping[str, str]) -> None:
    # Starting with a newline too: a line torn by a crash never swallows the next one.
    line = "\n" + json.dumps({"name": leaf, "file": list(fingerprint), "metadata": dict(metadata)}) + "\n"
    # One write(2) in O_APPEND mode: concurrent writers' lines land whole, one after another.
    fd = os.open(directory / INDEX, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("ascii"))
    finally:
        os.close(fd)


def _read_index(directory: Path) -> dict[tuple[str, Fingerprint], dict[str, str]]:
    index: dict[tuple[str, Fingerprint], dict[str, str]] = {}
    try:
        text = (directory / INDEX).read_text(encoding="ascii", errors="replace")
    except OSError:
        return index
    for line in text.splitlines():
        if not line:
            continue
        try:
            entry = json.loads(line)
            ino, size, mtime_ns = entry["file"]
            metadata = {str(k): str(v) for k, v in entry["metadata"].items()}
            index[(str(entry["name"]), (int(ino), int(size), int(mtime_ns)))] = metadata
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line torn by a crash: those objects list without metadata
    return index


class NotRegularFileError(NotFoundError):
    """A name that is a device, FIFO or socket: never read."""


def read_regular_file(path: Path, max_bytes: int | None = None, name: str | None = None) -> bytes:
    """The bytes of the regular file at `path`, at most `max_bytes` (`ObjectTooLargeError` beyond).

    Devices, FIFOs and sockets are refused (`NotFoundError`) before they are opened for reading:
    a name like `/dev/zero` would otherwise never end, and a FIFO would block the reader forever.
    """
    shown = name or str(path)
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(str(path))
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(f"{shown} is not a regular file (a device, FIFO or socket is never read)")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)  # the file opened, not the one stat'ed (it may have been swapped between)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"{shown} is not a regular file (a device, FIFO or socket is never read)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise ObjectTooLargeError(too_large(shown, st.st_size, max_bytes))
        limit = st.st_size if max_bytes is None else max_bytes
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    finally:
        os.close(fd)
    if max_bytes is not None and len(data) > max_bytes:  # grew while being read
        raise ObjectTooLargeError(too_large(shown, len(data), max_bytes))
    return data


def ensure_home(home: Path) -> Path:
    """`home` (WORKPOOL_HOME), created 0700; refused when another user owns it.

    Everything workpool keeps on this machine lives there: the embedded queue and results, the
    model cache, logs and state files. A folder of another user could be read, or its files
    swapped, by that user; one readable by others would show them runs and results.
    """
    home = home.absolute()
    try:
        home.mkdir(mode=HOME_MODE, parents=True, exist_ok=True)
        st = home.stat()
    except OSError as exc:
        raise SettingsError(f"setting WORKPOOL_HOME (home): cannot create {home}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SettingsError(f"setting WORKPOOL_HOME (home): {home} is not a folder")
    if st.st_uid != os.geteuid():
        raise SettingsError(
            f"setting WORKPOOL_HOME (home): {home} is owned by uid {st.st_uid}, not by this user "
            f"(uid {os.geteuid()}); expected a folder of your own"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(home, HOME_MODE)  # ours: no longer open to the group and others
    return home
