"""What the three command-line apps share: the --config option, settings, errors → exit codes.

Exit codes: 0 success, 1 failure during the work, 2 bad usage or settings.
"""

from __future__ import annotations

import functools
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
