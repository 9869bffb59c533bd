"""`workpool`: show the effective settings and check that the queue and result store answer."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from workpool.cli import ConfigOption, LogLevelOption, handle_errors, settings_for
from workpool.queue import open_queue
from workpool.storage import open_result_store

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
    """Check that the configured queue and result store can be reached."""
    s = settings_for(config, log_level)
    store = open_result_store(s)
    with open_queue(s) as queue:
        if create:
            queue.create()
            store.ensure()
        depth = queue.depth()
        store.check()
    typer.echo(f"storage: {s.storage_mode.value}")
    typer.echo(f"queue {queue.name}: {depth.messages} messages, {depth.poison} poisoned")
    typer.echo(f"result store {store.location}: reachable")


if __name__ == "__main__":
    app()
