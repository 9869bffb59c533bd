"""Custom tasks: `package.module:ClassName`, imported at run time, from allowed modules only.

The class must implement `consumer.tasks.base.ScoringTask`. Importing a module runs its code, so
a message may name only a module the operator allowed: the built-in tasks' package
(`consumer.tasks`, with the examples) and the modules of the `task_modules` setting
(`WORKPOOL_TASK_MODULES`, each with its submodules). A `__main__` module is never imported (that
would run a command-line tool). Anything else is a message that can never succeed on this
consumer, so it is reported as a `MessageError` (the batch goes to poison at once, with this
reason), before any import. A module that is allowed but fails to import is a batch failure like
any other (retried, then poisoned with its reason), whatever it raises.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence

from consumer.tasks.base import ScoringTask
from workpool.errors import MessageError

_SPEC = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
MODULES_SETTING = "WORKPOOL_TASK_MODULES"


def is_custom(task: str) -> bool:
    return ":" in task


def module_allowed(module_name: str, allowed: Sequence[str]) -> bool:
    """True when `module_name` is one of `allowed` or inside one of them (never a `__main__`)."""
    if "__main__" in module_name.split("."):
        return False
    return any(module_name == root or module_name.startswith(root + ".") for root in allowed)


def load_task_class(spec: str, allowed: Sequence[str] = ("consumer.tasks",)) -> type[ScoringTask]:
    if not _SPEC.match(spec):
        raise MessageError(
            f"unknown task {spec!r}: expected classification, cloth_recognition or package.module:ClassName"
        )
    module_name, _, class_name = spec.partition(":")
    if "__main__" in module_name.split("."):
        raise MessageError(f"unknown task {spec!r}: refused, a __main__ module runs a command when imported")
    if not module_allowed(module_name, allowed):
        raise MessageError(
            f"unknown task {spec!r}: refused, module {module_name} is not one this consumer may import "
            f"(allowed: {', '.join(allowed)}; add it to {MODULES_SETTING})"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MessageError(f"unknown task {spec!r}: cannot import {module_name} ({exc})") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ScoringTask)):
        raise MessageError(f"unknown task {spec!r}: {class_name} is not a ScoringTask subclass in {module_name}")
    return cls
