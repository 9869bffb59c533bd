"""Options and output helpers every `orchestration` command shares (the CLI module and commands/)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from orchestration.backends import BACKENDS
from workpool.errors import UsageError

BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help=f"Where nodes run: {' | '.join(BACKENDS)}. Default: the one that launched this queue's pool, else local.",
    ),
]
RunOption = Annotated[str, typer.Option("--run", help="Run id (as given to or printed by `producer enqueue`).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def check_backend(backend: str | None) -> None:
    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
