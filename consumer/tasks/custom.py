"""Custom tasks: `package.module:ClassName`, imported at run time.

The class must implement `consumer.tasks.base.ScoringTask`. A name that cannot be imported or
does not name such a class is a message that can never succeed on this consumer, so it is
reported as a `MessageError` (the batch goes to poison at once, with this reason).
"""

from __future__ import annotations

import importlib
import re

from consumer.tasks.base import ScoringTask
from workpool.errors import MessageError

_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_custom(task: str) -> bool:
    return ":" in task


def load_task_class(spec: str) -> type[ScoringTask]:
    if not _SPEC.match(spec):
        raise MessageError(
            f"unknown task {spec!r}: expected classification, cloth_recognition or package.module:ClassName"
        )
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MessageError(f"unknown task {spec!r}: cannot import {module_name} ({exc})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ScoringTask)):
        raise MessageError(f"unknown task {spec!r}: {class_name} is not a ScoringTask subclass in {module_name}")
    return cls
