"""The house's import rules, read from the source with `ast` (nothing is imported or run).

- Roles apart: `consumer/` and `producer/` never import `orchestration/`; `workpool/` (what the
  roles share) imports none of `consumer/`, `producer/`, `orchestration/`. One exception:
  `workpool/__init__.py` may re-export the Python API (`orchestration.api`: `Pool`, `Run`)
  lazily, from inside its module-level `__getattr__` (nothing runs back up at import time), and
  name it under its module-level `if TYPE_CHECKING:` so the facade is typed.
- The preemption watcher knows nothing of the consumer that owns it (it gets a callback).
- No import cycle between the project's modules, counting every import: top level, inside
  functions, and under `TYPE_CHECKING` (a failure names the cycle's path).

Every import is counted wherever it stands, so a rule cannot be dodged by moving an import
into a function.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workpool", "consumer", "producer", "orchestration")
ROLES = ("consumer", "producer", "orchestration")
# Which packages each package must never import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "workpool": ROLES,
    "consumer": ("orchestration",),
    "producer": ("orchestration",),
}
# The one allowed way up: workpool/__init__.py's lazy facade of the Python API, imported inside
# its module-level `__getattr__` (or named for the type checker under `if TYPE_CHECKING:`).
FACADE, FACADE_TARGET, FACADE_PLACES = "workpool", "orchestration.api", frozenset({"__getattr__", "TYPE_CHECKING"})

# An import statement at any depth (module level, in a function, under `if TYPE_CHECKING:`),
# parenthesised ones across lines. Each statement is parsed with `ast` on its own, not whole
# files: that keeps the check well under a second on a loaded machine. Text that only looks like
# an import (a line of a docstring starting with "import") does not parse and is skipped.
_STATEMENT = re.compile(
    r"^(?P<indent>[ \t]*)"
    r"(?:from[ \t]+[\w.]+[ \t]+import[ \t]*\([^)]*\)|from[ \t]+[\w.]+[ \t]+import[^\n]*|import[ \t]+[^\n]*)",
    re.MULTILINE,
)
# An import by name at run time (`importlib.import_module("a.b")`, what a lazy facade uses).
_DYNAMIC = re.compile(r"^(?P<indent>[ \t]*).*?\bimport_module\(\s*[\"'](?P<name>[\w.]+)[\"']", re.MULTILINE)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported project module, dotted (the most specific one that exists)
    line: int
    indented: bool  # not at module level (in a function, under `if TYPE_CHECKING:` ...)
    place: str | None = None  # its module-level function or `TYPE_CHECKING` block, where asked for (see `imports`)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the four packages, dotted name → file."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def resolve(name: str) -> str | None:
    """The most specific project module that `name` (a module or a module's attribute) lies in."""
    known = modules()
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def import_statements(source: str) -> Iterator[tuple[int, bool, ast.Import | ast.ImportFrom]]:
    """(line, indented, node) for every import statement in `source`."""
    for match in _STATEMENT.finditer(source):
        try:
            tree = ast.parse(match.group(0).strip())
        except SyntaxError:
            continue  # prose that starts with "import" or "from"
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield source.count("\n", 0, match.start()) + 1, bool(match.group("indent")), node
    for match in _DYNAMIC.finditer(source):
        node = ast.Import(names=[ast.alias(name=match.group("name"))])
        yield source.count("\n", 0, match.start()) + 1, bool(match.group("indent")), node


def imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """The dotted names an import statement of `module` brings in (relative ones made absolute)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:  # relative: from the module's package, up `level - 1` more
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    for alias in node.names:
        # `from a import b`: b may be a module of its own, or a name defined in a
        yield f"{prefix}.{alias.name}" if alias.name != "*" else prefix


def _is_import(node: ast.AST) -> bool:
    if isinstance(node, ast.Import | ast.ImportFrom):
        return True
    if isinstance(node, ast.Call):
        func = node.func
        return (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) == "import_module"
    return False


def places_of_imports(tree: ast.Module) -> dict[int, str]:
    """Line of each import inside a module-level function → its name; inside a module-level
    `if TYPE_CHECKING:` → "TYPE_CHECKING"."""
    lines: dict[int, str] = {}
    for top in tree.body:
        if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef):
            place = top.name
        elif isinstance(top, ast.If) and ast.unparse(top.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            place = "TYPE_CHECKING"
        else:
            continue
        for node in ast.walk(top):
            if isinstance(node, ast.Import | ast.ImportFrom | ast.Call) and _is_import(node):
                lines[node.lineno] = place
    return lines


@cache
def imports() -> tuple[Import, ...]:
    """Every import of a project module by a project module, wherever it stands."""
    found: list[Import] = []
    for module, path in modules().items():
        source = path.read_text(encoding="utf-8")
        is_package = path.name == "__init__.py"
        # Where the exception lives the enclosing place matters: that (small) file is parsed whole.
        places = places_of_imports(ast.parse(source)) if module == FACADE else {}
        for line, indented, node in import_statements(source):
            for name in imported_names(node, module, is_package):
                target = resolve(name)
                if target is not None and target != module:
                    found.append(Import(module, target, line, indented, places.get(line)))
    return tuple(found)


def package_of(module: str) -> str:
    return module.split(".", 1)[0]


def allowed_way_up(imp: Import) -> bool:
    return imp.source == FACADE and imp.place in FACADE_PLACES and imp.target.startswith(FACADE_TARGET)


def role_violations(found: tuple[Import, ...]) -> list[str]:
    problems = []
    for imp in found:
        banned = FORBIDDEN.get(package_of(imp.source), ())
        if package_of(imp.target) in banned and not allowed_way_up(imp):
            where = " (not at module level)" if imp.indented else ""
            problems.append(f"{modules()[imp.source].relative_to(ROOT)}:{imp.line}{where} imports {imp.target}")
    return problems


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (its first module repeated at the end), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(edges, white)
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if colour.get(nxt, white) == grey:
                return [*path[path.index(nxt) :], nxt]
            if colour.get(nxt, white) == white:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        colour[node] = black
        return None

    for start in sorted(edges):
        if colour[start] == white:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def import_graph(found: tuple[Import, ...]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for imp in found:
        if not allowed_way_up(imp):
            graph[imp.source].add(imp.target)
    return graph


# --- the rules ---------------------------------------------------------------------------------
def test_the_source_is_read_completely() -> None:
    # Sanity: the scan sees the packages, their imports at every depth, and relative imports.
    assert {package_of(m) for m in modules()} == set(PACKAGES)
    assert len(modules()) > 60
    found = imports()
    pairs = {(i.source, i.target) for i in found}
    assert ("consumer.runner", "consumer.preemption") in pairs  # top level
    assert ("consumer.gpu_fanout", "workpool.processes.signals") in pairs  # `from pkg import module`
    assert any(i.indented for i in found)  # inside functions, counted too


def test_roles_do_not_reach_into_each_other() -> None:
    problems = role_violations(imports())
    assert not problems, "imports that break the role rules:\n" + "\n".join(problems)


def test_the_only_way_up_is_the_lazy_re_export_in_workpool_getattr() -> None:
    # An import of a role anywhere else in workpool/__init__.py (at import time, or in any other
    # function) is a violation; inside `__getattr__` it runs only when `workpool.Pool` is asked for.
    for imp in imports():
        if allowed_way_up(imp):
            assert imp.source == "workpool" and imp.indented and imp.target.startswith("orchestration.api")


def test_the_preemption_watcher_does_not_know_the_consumer() -> None:
    targets = {i.target for i in imports() if i.source == "consumer.preemption"}
    assert "consumer.runner" not in targets, "the guard gets a callback, not the consumer"


def test_there_is_no_import_cycle_between_modules() -> None:
    cycle = find_cycle(import_graph(imports()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# --- the checker catches what it is meant to catch ------------------------------------------------
@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"b"}}, ["b", "b"]),
    ],
)
def test_a_cycle_is_reported_with_its_path(edges: dict[str, set[str]], expected: list[str] | None) -> None:
    assert find_cycle(edges) == expected


def test_relative_and_from_imports_resolve_to_the_module_they_name() -> None:
    source = "from . import classification\nfrom ..lease import (\n    LeaseKeeper,\n)\nimport consumer.worker as w\n"
    names = [n for _, _, node in import_statements(source) for n in imported_names(node, "consumer.tasks.base", False)]
    assert [resolve(n) for n in names] == ["consumer.tasks.classification", "consumer.lease", "consumer.worker"]


def test_imports_inside_functions_and_type_checking_blocks_break_the_rules_too() -> None:
    source = (
        '"""A module.\n\nimport orchestration is prose here.\n"""\n'
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from orchestration.pool import Pool\n"
        "def later() -> None:\n    import orchestration.cli\n"
    )
    found = tuple(
        Import("consumer.runner", target, line, indented)
        for line, indented, node in import_statements(source)
        for name in imported_names(node, "consumer.runner", False)
        if (target := resolve(name)) is not None
    )
    assert [(i.target, i.line, i.indented) for i in found] == [
        ("orchestration.pool", 7, True),
        ("orchestration.cli", 9, True),
    ]
    assert len(role_violations(found)) == 2


def test_a_role_import_in_workpool_is_allowed_only_in_the_api_facade() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from orchestration.api import Pool\n"
        "def __getattr__(name: str) -> object:\n"
        "    return getattr(importlib.import_module('orchestration.api'), name)\n"
        "def other() -> None:\n    from orchestration.api import Pool\n"
        "def __getattr__later() -> None:\n    import orchestration.cli\n"
        "x = importlib.import_module('consumer.runner')\n"
    )
    places = places_of_imports(ast.parse(source))
    found = tuple(
        sorted(
            (
                Import("workpool", target, line, indented, places.get(line))
                for line, indented, node in import_statements(source)
                for name in imported_names(node, "workpool", True)
                if (target := resolve(name)) is not None
            ),
            key=lambda i: i.line,
        )
    )
    assert [(i.line, allowed_way_up(i)) for i in found] == [(3, True), (5, True), (7, False), (9, False), (10, False)]
    assert role_violations(found) == [
        "workpool/__init__.py:7 (not at module level) imports orchestration.api",
        "workpool/__init__.py:9 (not at module level) imports orchestration.cli",
        "workpool/__init__.py:10 imports consumer.runner",
    ]
