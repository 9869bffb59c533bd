"""The `producer` command: `enqueue` a source as a run, `requeue` a run's failed or missing work.

Exit codes: 0 done, 1 failure during the work (storage unreachable past retries), 2 bad usage,
settings or input (nothing enqueued then).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from producer.enqueue import EnqueueRequest, EnqueueSummary, enqueue
from producer.requeue import RequeueSummary, requeue_failed, requeue_missing
from producer.sources import IMAGE_EXTENSIONS
from producer.validate import with_batch_size
from workpool.cli import ConfigOption, LogLevelOption, handle_errors, settings_for
from workpool.errors import UsageError
from workpool.storage import open_result_store

app = typer.Typer(
    name="producer",
    help=(
        "Turn an image source into a run of batch messages on the work queue, "
        "and re-send a run's failed or missing batches."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown joins a paragraph's lines, so docstrings wrap to the terminal instead of breaking mid-sentence.
    rich_markup_mode="markdown",
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print only a JSON summary on stdout.")]
_EXTENSIONS = "/".join(e.lstrip(".") for e in sorted(IMAGE_EXTENSIONS))


@app.callback()
def main(ctx: typer.Context, config: ConfigOption = None, log_level: LogLevelOption = "INFO") -> None:
    """Settings come from WORKPOOL_* variables, an optional --config file, then flags."""
    ctx.obj = {"config": config, "log_level": log_level}


def _global(ctx: typer.Context, config: Path | None, log_level: str | None) -> tuple[Path | None, str]:
    """A command's own --config/--log-level, else the ones given before the command."""
    outer: dict[str, Any] = ctx.obj or {}
    return config or outer.get("config"), log_level or outer.get("log_level") or "INFO"


@app.command("enqueue")
@handle_errors
def enqueue_command(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help=(
                "A local directory, `az://<container>/<prefix>` (a blob folder), or `@<file>` with one image "
                "name per line (relative to the file's folder, or absolute paths / `az://` URIs). "
                f"Only {_EXTENSIONS} files are enqueued (any case); others are counted as skipped."
            ),
            show_default=False,
        ),
    ],
    run: Annotated[
        str | None,
        typer.Option("--run", help="Run id (letters, digits, . _ -). Default: run-YYYYmmdd-HHMMSS-xxxx."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", help="Images per batch message (default 64, or `WORKPOOL_BATCH_SIZE`).", show_default=False
        ),
    ] = None,
    task: Annotated[
        str,
        typer.Option("--task", help="classification, cloth_recognition, or a custom task as pkg.module:Class."),
    ] = "classification",
    model: Annotated[
        str | None, typer.Option("--model", help="Model URI: a local path or `az://<container>/<path>`.")
    ] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Labels URI for the task: a local path or `az://<container>/<path>`.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Enqueue only the first N images of the sorted listing.")
    ] = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")] = None,
) -> None:
    """List SOURCE, cut it into batches, write the run's manifest, then send one message per batch.

    The manifest (`runs/<run>/manifest.json` in the result store) is written before any message
    is sent. Bad input (empty or missing source, unreadable list file, bad batch size, unknown
    task, existing run) exits with code 2 and leaves nothing behind.

    Examples:

    * `producer enqueue ./images --run demo-1`
    * `producer enqueue az://photos/2024/ --task cloth_recognition --model az://models/cloth.keras`
    * `producer enqueue @names.txt --batch-size 32 --limit 1000 --json`
    """
    config_file, level = _global(ctx, config, log_level)
    settings = with_batch_size(settings_for(config_file, level), batch_size)
    summary = enqueue(
        settings,
        EnqueueRequest(source=source, run_id=run, task=task, model=model, labels=labels, limit=limit),
    )
    if json_output:
        typer.echo(json.dumps(summary.to_json()))
    else:
        typer.echo(_describe_enqueue(summary, open_result_store(settings).location))


@app.command("requeue")
@handle_errors
def requeue_command(
    ctx: typer.Context,
    run: Annotated[str, typer.Option("--run", help="The run to requeue.", show_default=False)],
    failed: Annotated[
        bool,
        typer.Option("--failed", help="Send the run's batches in `<queue>-poison` back, with fresh attempts."),
    ] = False,
    missing: Annotated[
        bool,
        typer.Option("--missing", help="Re-send every manifest batch without a result yet (lost or expired messages)."),
    ] = False,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")] = None,
) -> None:
    """Send a run's work again: --failed (from the poison queue) or --missing (no result yet).

    --failed leaves other runs' poison records where they are and deletes the requeued batches'
    poison reports. --missing may send a batch that is still being scored; that is harmless,
    since results are written once per batch.

    Examples:

    * `producer requeue --run demo-1 --failed`
    * `producer requeue --run demo-1 --missing --json`
    """
    if failed == missing:
        raise UsageError("give exactly one of --failed or --missing")
    config_file, level = _global(ctx, config, log_level)
    settings = settings_for(config_file, level)
    summary = requeue_failed(settings, run) if failed else requeue_missing(settings, run)
    if json_output:
        typer.echo(json.dumps(summary.to_json()))
    else:
        typer.echo(_describe_requeue(summary))


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def _describe_enqueue(s: EnqueueSummary, store: str) -> str:
    extras = []
    if s.skipped:
        extras.append(f"{_count(s.skipped, 'file')} skipped: not images")
    if s.duplicates:
        extras.append(f"{_count(s.duplicates, 'duplicate name')} dropped")
    note = f" ({'; '.join(extras)})" if extras else ""
    return (
        f"Enqueued run {s.run_id}: {_count(s.images, 'image')} in {_count(s.batches, 'batch', 'batches')} "
        f"of up to {s.batch_size} "
        f"on queue {s.queue}{note}, in {s.seconds:.1f} s.\n"
        f"Source: {s.source}   task: {s.task}" + (f"   model: {s.model}" if s.model else "") + "\n"
        f"Manifest: {store}/runs/{s.run_id}/manifest.json\n"
        f"Next: orchestration launch --nodes N, then orchestration wait --run {s.run_id}"
    )


def _describe_requeue(s: RequeueSummary) -> str:
    if s.mode == "failed":
        line = (
            f"Requeued {_count(s.requeued, 'failed batch', 'failed batches')} ({_count(s.images, 'image')}) "
            f"of run {s.run_id} "
            f"from {s.queue}-poison to {s.queue}"
        )
        if s.duplicates_dropped:
            line += f"; dropped {_count(s.duplicates_dropped, 'duplicate poison record')}"
        return line + f"; {_count(s.left_in_poison, 'other record')} left in poison."
    if not s.requeued:
        return f"Nothing to requeue: all {s.batches} batches of run {s.run_id} have results."
    return (
        f"Requeued {s.requeued:,} of {_count(s.batches, 'batch', 'batches')} ({_count(s.images, 'image')}) "
        f"of run {s.run_id} "
        f"that had no result; {s.with_results} already had results."
    )
