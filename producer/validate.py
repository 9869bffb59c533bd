"""Checks on what the user asked for, done before anything is written or sent.

A typo caught here costs one clear line and exit code 2; caught by the consumers, it would cost a
poisoned batch per message.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from workpool.errors import NotFoundError, UsageError
from workpool.messages import ID_PATTERN, MAX_BATCH_IMAGES
from workpool.settings import Settings
from workpool.storage import blob_store, parse_location

log = logging.getLogger(__name__)

BUILTIN_TASKS = ("classification", "cloth_recognition")
# pkg.module:Class, with identifiers only: what the consumer imports and instantiates.
_CUSTOM_TASK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_MAX_TASK_LENGTH = 200  # BatchMessage.task's limit


def new_run_id(now: datetime | None = None) -> str:
    """`run-YYYYmmdd-HHMMSS-xxxx`: sortable by start time, unique enough for one account."""
    now = now or datetime.now(UTC)
    return f"run-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def check_run_id(run_id: str) -> str:
    if not re.match(ID_PATTERN, run_id):
        raise UsageError(
            f"run id {run_id!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return run_id


def with_batch_size(settings: Settings, batch_size: int | None) -> Settings:
    """The settings with `--batch-size` applied (None: as they are); a size out of range is refused naming the flag."""
    if batch_size is None:
        return settings
    if not 1 <= batch_size <= MAX_BATCH_IMAGES:
        raise UsageError(f"--batch-size must be between 1 and {MAX_BATCH_IMAGES}, got {batch_size}")
    return settings.model_copy(update={"batch_size": batch_size})


def check_task(task: str) -> str:
    """A built-in task name, or `pkg.module:Class` for a custom task the consumers can import.

    The producer does not import custom tasks (that would run their code here, and the consumers
    may be the only machines that have them installed); it checks the form, and warns when the
    top-level package is not importable on this machine.
    """
    if task in BUILTIN_TASKS:
        return task
    if ":" not in task:
        raise UsageError(
            f"unknown task {task!r}: expected {' or '.join(BUILTIN_TASKS)}, or a custom task as pkg.module:Class"
        )
    if len(task) > _MAX_TASK_LENGTH or not _CUSTOM_TASK.match(task):
        raise UsageError(
            f"custom task {task!r} is not of the form pkg.module:Class "
            "(dotted Python identifiers, one ':' before the class name)"
        )
    top_level = task.split(":", 1)[0].split(".", 1)[0]
    if importlib.util.find_spec(top_level) is None:
        log.warning("task package %r is not importable here; the consumers must have it installed", top_level)
    return task


def check_uri(settings: Settings, uri: str | None, what: str) -> str | None:
    """A model or labels location that exists: a local path (made absolute) or az://container/path.

    Local paths are made absolute because consumers run from other working directories. A blob
    URI may name one blob or a folder of them (a SavedModel directory).
    """
    if uri is None:
        return None
    if not uri.strip():
        raise UsageError(f"--{what} is empty: give a local path or az://<container>/<path>")
    try:
        location = parse_location(uri)
    except UsageError as exc:
        raise UsageError(f"--{what}: {exc}") from None
    if location.container is None:
        if not Path(location.path).exists():
            raise UsageError(f"--{what} {location.path} does not exist")
        return location.uri()
    if not location.path.strip("/"):
        raise UsageError(f"--{what} {uri} names a container, not a blob: use az://<container>/<path>")
    store = blob_store(settings, location.container)
    name = location.path.rstrip("/")
    try:
        store.check()
        found = store.exists(name) or next(iter(store.list(name + "/")), None) is not None
    except NotFoundError as exc:
        raise UsageError(f"--{what} {uri}: {exc}") from None
    if not found:
        raise UsageError(f"--{what} {uri} does not exist (no blob {name!r} and nothing under {name + '/'!r})")
    return location.uri()
