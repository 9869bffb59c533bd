"""The `workpool` command (settings, doctor), and what every command-line app shares: the
--config option, settings, errors → exit codes.

Exit codes: 0 success, 1 failure during the work, 2 bad usage or settings.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from workpool import logs
from workpool.errors import UsageError, WorkpoolError
from workpool.settings import Settings, load_settings

P = ParamSpec("P")
R = TypeVar("R")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Settings file (JSON or TOML; keys are setting names). Environment variables and flags override it.",
        envvar="WORKPOOL_CONFIG",
        show_envvar=True,
    ),
]
LogLevelOption = Annotated[
    str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.", envvar="WORKPOOL_LOG_LEVEL")
]

# The secrets of the settings in use, so errors printed by `fail` can be redacted too.
_secrets: list[str] = []


def plural(count: int, noun: str) -> str:
    """`1 batch`, `2 batches`, `0 records`."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun}es" if noun.endswith(("ch", "sh", "s", "x")) else f"{count} {noun}s"


def settings_for(config: Path | None, log_level: str = "INFO", **flags: Any) -> Settings:
    """Load settings (SettingsError → exit 2) and configure logging with secret redaction."""
    settings = load_settings(config, **flags)
    _secrets[:] = settings.secret_values()
    logs.configure(log_level, _secrets)
    return settings


def fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    typer.echo(f"error: {logs.redact(message, _secrets)}", err=True)
    return typer.Exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn workpool errors into one clear line on stderr and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except UsageError as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        except WorkpoolError as exc:
            logging.getLogger(func.__module__).debug("failure", exc_info=True)
            raise fail(str(exc), EXIT_FAILURE) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


# --- the `workpool` command -------------------------------------------------------------------
app = typer.Typer(help="Inspect workpool's configuration.", no_args_is_help=True, add_completion=False)


@app.command()
@handle_errors
def settings(config: ConfigOption = None, log_level: LogLevelOption = "WARNING") -> None:
    """Print the effective settings as JSON (secrets masked) and where storage lives."""
    s = settings_for(config, log_level)
    typer.echo(json.dumps({"storage": s.storage_mode.value, **s.describe()}, indent=2, default=str))


@app.command()
@handle_errors
def doctor(
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
    create: Annotated[bool, typer.Option(help="Create the queue, poison queue and result store if missing.")] = False,
) -> None:
    """Check that the configured queue and result store can be reached.

    On a fresh home (or account) they do not exist yet: the first `producer enqueue` creates
    them, and so does `workpool doctor --create`.
    """
    from workpool.errors import NotFoundError
    from workpool.queue import open_queue
    from workpool.storage import open_result_store

    s = settings_for(config, log_level)
    store = open_result_store(s)
    with open_queue(s) as queue:
        if create:
            queue.create()
            store.ensure()
        try:
            depth = queue.depth()
            store.check()
        except NotFoundError as exc:
            raise WorkpoolError(
                f"{exc}: storage is reachable, but nothing was created here yet. `workpool doctor --create` "
                "creates the queue, its poison queue and the result store (the first `producer enqueue` does too)"
            ) from None
    typer.echo(f"storage: {s.storage_mode.value}")
    typer.echo(f"queue {queue.name}: {depth.messages} messages, {depth.poison} poisoned")
    typer.echo(f"result store {store.location}: reachable")
