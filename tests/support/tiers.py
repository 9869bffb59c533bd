"""The suite's tiers, one per test, inferred from what each test uses (tests/conftest.py applies them).

- `inprocess`: everything runs in the test's own process (memory or embedded backends, no
  Azurite, no child process): `make check`, the inner loop.
- `integration`: Azurite (the contract suites on it), a real child process (one CLI run), a
  small model.
- `system`: faults, local pools, autoscale, emulated clusters, node bootstrap: the existing
  `slow`, `faults` and `batch_emulator` markers and the fixtures that start such things.

A test marked with a tier keeps it (for where inference is wrong). Otherwise the first rule that
matches decides, in this order: system markers or fixtures; Azurite (its marker, which the
`azurite` backend parameter carries, or its fixture); a process started by the test, by a
fixture or by a helper of the tests (read from their source, following the helpers they call);
else `inprocess`. A test whose source cannot be read is `system`: unknown means the slowest tier.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import sys
import textwrap
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

TIERS = ("inprocess", "integration", "system")
SYSTEM_MARKERS = {"slow", "faults", "batch_emulator"}
SYSTEM_FIXTURES = {"batch_emulator", "batch_dependencies", "own_azurite", "wheel_cache", "node_wheel_cache"}
INTEGRATION_MARKERS = {"azurite"}
INTEGRATION_FIXTURES = {"azurite"}
# Source text that starts a process (or a pool of them), directly or through the product code
# the tests call: seen in a test, a fixture or a test helper, the test is not in-process.
PROCESS_SIGNS = re.compile(
    r"\b(subprocess|Popen|multiprocessing|os\.fork|ProcessPoolExecutor|sys\.executable|run_cli|"
    r"build_wheel|get_context|start_new_session)\b"
)
# ... and text that builds or loads a TensorFlow model ("small models" are integration too).
MODEL_SIGNS = re.compile(r"\b(import tensorflow|from tensorflow|tensorflow\.|tf\.|keras\.)")
TESTS_ROOT = Path(__file__).resolve().parents[1]


def tier_of(markers: Iterable[str], fixtures: Iterable[str], starts_processes: bool | None) -> str:
    """The tier for a test with these marker names and fixture names (its whole closure);
    `starts_processes` None when its source could not be read."""
    markers, fixtures = set(markers), set(fixtures)
    explicit = markers & set(TIERS)
    if len(explicit) > 1:
        raise ValueError(f"marked with {len(explicit)} tiers ({', '.join(sorted(explicit))}); one at most")
    if explicit:
        return explicit.pop()
    if markers & SYSTEM_MARKERS or fixtures & SYSTEM_FIXTURES or starts_processes is None:
        return "system"
    if markers & INTEGRATION_MARKERS or fixtures & INTEGRATION_FIXTURES or starts_processes:
        return "integration"
    return "inprocess"


def tiers_of(item: Any) -> list[str]:
    """The tier markers a collected test carries (exactly one once conftest has run)."""
    return [tier for tier in TIERS if item.get_closest_marker(tier) is not None]


def starts_processes(test: Any, fixture_functions: Iterable[Any]) -> bool | None:
    """Whether the test function, one of its fixtures, or a tests/ helper either calls (followed
    through names and `module.name`) shows a sign of starting a process; None when unreadable."""
    try:
        if _shows_process(_unwrap(test)):
            return True
    except (OSError, TypeError, SyntaxError):
        return None
    for fixture in fixture_functions:
        try:
            if _is_ours(_unwrap(fixture)) and _shows_process(_unwrap(fixture)):
                return True
        except (OSError, TypeError, SyntaxError):
            return None
    return False


def _unwrap(obj: Any) -> Any:
    obj = getattr(obj, "__func__", obj)
    return inspect.unwrap(obj) if callable(obj) else obj


def _is_ours(obj: Any) -> bool:
    """Defined in a file under tests/ (a test module or tests/support)."""
    try:
        source = inspect.getsourcefile(obj)
    except TypeError:
        return False
    return source is not None and Path(source).resolve().is_relative_to(TESTS_ROOT)


@functools.cache
def _shows_process(obj: Any, depth: int = 0) -> bool:
    source = textwrap.dedent(inspect.getsource(obj))
    if PROCESS_SIGNS.search(source) or MODEL_SIGNS.search(source):
        return True
    if depth >= 4:
        return False
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    scope = vars(module) if module else {}
    for helper in _referenced(ast.parse(source), scope):
        if helper is not obj and _is_ours(helper):
            try:
                if _shows_process(helper, depth + 1):
                    return True
            except (OSError, TypeError, SyntaxError):
                continue
    return False


def _referenced(tree: ast.AST, scope: dict[str, Any]) -> Iterator[Any]:
    """Functions and classes a source refers to by a global name or as `module.name` (type
    annotations aside: naming a type uses nothing)."""
    annotations = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg)
            hints = [a.annotation for a in every if a]
            annotations.update(id(n) for hint in [*hints, node.returns] if hint for n in ast.walk(hint))
        elif isinstance(node, ast.AnnAssign):
            annotations.update(id(n) for n in ast.walk(node.annotation))
    for node in ast.walk(tree):
        if id(node) in annotations:
            continue
        if isinstance(node, ast.Name):
            found = scope.get(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            base = scope.get(node.value.id)
            found = getattr(base, node.attr, None) if isinstance(base, types.ModuleType) else None
        else:
            continue
        if isinstance(found, (types.FunctionType, type)):
            yield found
