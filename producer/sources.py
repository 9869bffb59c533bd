"""Listing an image source: a local directory, `az://<container>/<prefix>`, or `@<list file>`.

Every form ends as a `Listing`: the source every message will carry (a directory or
`az://container/prefix`), the image names relative to it, sorted by code point so the same source
always gives the same batches, and what was left out (names without an image extension,
duplicate lines of a list file).

A missing directory, container or list file is the user's mistake, not a failure during the
work, so it surfaces as `UsageError` (exit code 2) like every other bad input here.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from workpool.errors import NotFoundError, UsageError
from workpool.messages import unsafe_name_reason
from workpool.settings import Settings
from workpool.storage import AZ_SCHEME, open_location, parse_location

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
LIST_PREFIX = "@"
_SNIFF_BYTES = 4096  # read of a file given as SOURCE, to tell a list of names from anything else


@dataclass(frozen=True)
class Listing:
    """The images of a source, ready to be cut into batches."""

    source: str  # what messages carry: an absolute directory or az://container/prefix
    images: list[str]  # names relative to `source`, sorted, unique
    skipped: int  # names left out because their extension is not an image's
    duplicates: int = 0  # repeated lines of a list file, dropped


def is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_source(settings: Settings, source: str) -> Listing:
    """List `source` (directory, az://container/prefix or @file) and keep the image names."""
    if not source.strip():
        raise UsageError("SOURCE is empty: give a directory, az://<container>/<prefix> or @<list file>")
    if source.startswith(LIST_PREFIX):
        return _list_file(Path(source[len(LIST_PREFIX) :]))
    if source.startswith(AZ_SCHEME):
        return _list_container(settings, source)
    return _list_directory(settings, source)


def _list_directory(settings: Settings, source: str) -> Listing:
    path = Path(source)
    if path.is_file():
        raise UsageError(f"{source} is a file, not a directory; {_file_hint(path, source)}")
    store, _ = open_location(settings, source)
    try:
        names = list(store.list())
    except NotFoundError as exc:
        raise UsageError(str(exc)) from None
    return _keep_images(store.location, names)


def _file_hint(path: Path, source: str) -> str:
    """What to give instead of a file: `@file` only for a text file (a list of names)."""
    if is_image_name(source):
        folder = str(path.parent) if str(path.parent) != "." else "."
        return f"give the folder that holds it ({folder}), or a text file listing the images as @<file>"
    not_text = "give a directory, az://<container>/<prefix>, or a text file of image names as @<file>"
    try:
        with path.open("rb") as f:
            head = f.read(_SNIFF_BYTES)
        if b"\x00" in head:
            return not_text
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut in half at the end of the read
            return not_text
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    return f"to enqueue the names it lists, use @{source}"


def _list_container(settings: Settings, source: str) -> Listing:
    store, prefix = open_location(settings, source)
    # The prefix is a folder: "az://c/train" lists "train/…" (not "training/…"), and the names
    # in messages are relative to it, so consumers join source and name with one "/".
    folder = prefix.strip("/")
    try:
        store.check()
        names = list(store.list(folder + "/" if folder else ""))
    except NotFoundError as exc:
        raise UsageError(str(exc)) from None
    cut = len(folder) + 1 if folder else 0
    uri = f"{AZ_SCHEME}{parse_location(source).container}" + (f"/{folder}" if folder else "")
    return _keep_images(uri, [name[cut:] for name in names])


def _list_file(path: Path) -> Listing:
    """A list file: one image per line, relative to the file's folder, or full locations.

    Blank lines and lines starting with '#' are ignored. When every line is a relative name the
    source is the list file's folder; when lines are full locations (absolute paths or
    az://container/name, all in one container) the source is their deepest common folder.
    """
    if not str(path):
        raise UsageError("@ needs a file name: @<file with one image name per line>")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"list file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"list file {path} is a directory; to enqueue a directory, drop the '@'") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"list file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"list file {path} cannot be read: {exc.strerror}") from None

    lines = [
        (number, line.rstrip("\r"))
        for number, line in enumerate(text.split("\n"), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    full = [(n, line) for n, line in lines if _is_full_location(line)]
    if not full:
        for number, name in lines:
            _check_name(path, number, name)
        return _keep_images(str(path.absolute().parent), [name for _, name in lines])
    base = path.absolute().parent
    locations = [(n, line if _is_full_location(line) else str(base / line)) for n, line in lines]
    return _from_locations(path, locations)


def _is_full_location(line: str) -> bool:
    return line.startswith((AZ_SCHEME, "/"))


def _check_name(path: Path, number: int, name: str) -> None:
    problem = unsafe_name_reason(name)
    if problem:
        raise UsageError(f"list file {path} line {number}: {name!r} {problem}")


def _from_locations(path: Path, locations: list[tuple[int, str]]) -> Listing:
    """Full locations: one container (or the local filesystem), source = common folder."""
    stores = set()
    for number, uri in locations:
        try:
            stores.add(parse_location(uri).container)
        except UsageError as exc:
            raise UsageError(f"list file {path} line {number}: {exc}") from None
    if len(stores) > 1:
        found = ", ".join(sorted(f"az://{c}" if c else "local files" for c in stores))
        raise UsageError(f"list file {path} mixes stores ({found}); a run reads from one container or directory tree")
    [container] = stores
    paths = [uri[len(AZ_SCHEME) + len(container) + 1 :] if container else uri for _, uri in locations]
    if container is not None and any(not p for p in paths):
        raise UsageError(f"list file {path}: az://{container} lines must name a blob, not just the container")
    folder = posixpath.dirname(posixpath.commonprefix(paths)) if len(paths) > 1 else posixpath.dirname(paths[0])
    # commonprefix works on characters; cut back to a whole folder so "a/b1" and "a/b2" give "a".
    if not all(p.startswith(folder.rstrip("/") + "/") for p in paths):
        folder = posixpath.dirname(folder)
    folder = folder.rstrip("/")
    cut = len(folder) + 1
    names = [p[cut:] for p in paths]
    for (number, _), name in zip(locations, names, strict=True):
        _check_name(path, number, name)
    if container is None:
        return _keep_images(folder or "/", names)
    return _keep_images(f"{AZ_SCHEME}{container}" + (f"/{folder}" if folder else ""), names)


def _keep_images(source: str, names: list[str]) -> Listing:
    images = [name for name in names if is_image_name(name)]
    unique = sorted(set(images))
    return Listing(
        source=source,
        images=unique,
        skipped=len(names) - len(images),
        duplicates=len(images) - len(unique),
    )
