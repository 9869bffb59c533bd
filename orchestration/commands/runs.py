"""`orchestration runs | cancel | delete | poison`: a run's life after enqueue, over orchestration/lifecycle.py."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestration.autoscale.state import read_state as read_autoscaler_state
from orchestration.backends import open_launcher
from orchestration.commands.options import JsonOption, RunOption, echo_json
from orchestration.deployment import resolve_backend
from orchestration.lifecycle import cancel_run, delete_run, list_poison, list_runs, purge_poison
from orchestration.pool_settings import apply_hint
from workpool.cli import ConfigOption, LogLevelOption, handle_errors, plural, settings_for
from workpool.errors import UsageError, WorkpoolError
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store


def no_nodes_notice(settings: Settings, run_id: str) -> str | None:
    """What `wait` says first when the run has work left and no node works on the queue (and no
    autoscaler will start one); None when nodes are there, or the run has ended."""
    try:
        if RunStore(open_result_store(settings)).run_state(run_id, timing=False).phase in ("done", "cancelled"):
            return None
        backend = resolve_backend(settings, None)
        cluster = open_launcher(backend, settings).state()
        autoscaler = read_autoscaler_state(open_result_store(settings), settings.queue)
    except WorkpoolError:
        return None  # cannot tell: say nothing rather than something wrong
    if cluster.nodes or cluster.target_nodes or (autoscaler is not None and autoscaler.get("running")):
        return None
    return (
        f"no node is running for queue {settings.queue} ({backend}): nothing will score this run until you start "
        "some with `orchestration launch --nodes N` (waiting meanwhile; Ctrl-C to stop)"
    )


@handle_errors
def runs_command(
    all_queues: Annotated[bool, typer.Option("--all-queues", help="Also list runs enqueued on other queues.")] = False,
    json_out: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
) -> None:
    """List the queue's runs, oldest first: id, created, images, batches done/failed/poisoned, state.

    State: pending (nothing finished yet), running, done (every batch done or poisoned), cancelled.
    """
    settings = settings_for(config, log_level)
    found = list_runs(settings, all_queues=all_queues)
    if json_out:
        echo_json([r.to_dict() for r in found])
        return
    if not found:
        typer.echo(f"no runs on queue {settings.queue} yet (`producer enqueue SOURCE --model URI` creates one)")
        return
    header = ("run", "created (UTC)", "images", "batches", "done", "poisoned", "failed images", "state")
    rows = [
        (
            r.run_id,
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            str(r.images),
            str(r.batches),
            str(r.batches_done),
            str(r.batches_poisoned),
            str(r.images_failed),
            r.state,
        )
        for r in found
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(w) if i in (0, 1, 7) else cell.rjust(w) for i, (cell, w) in
                             enumerate(zip(row, widths, strict=True))).rstrip())  # fmt: skip


@handle_errors
def cancel_command(
    run: RunOption,
    json_out: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
) -> None:
    """Cancel a run: take its waiting batches off the queue, keep its results so far.

    Batches in flight finish (their results are written whole) or, if they come back, are
    dropped unscored by the consumer that receives them. `wait` and `status` then say
    "cancelled". Cancelling twice is no error (it sweeps the queue again).
    """
    settings = settings_for(config, log_level)
    result = cancel_run(settings, run)
    if json_out:
        echo_json(result.to_dict())
        return
    if result.in_flight is None:
        flight = "batches in flight (if any) finish or are dropped"
    elif result.in_flight:
        flight = f"{plural(result.in_flight, 'batch')} in flight finish or are dropped"
    else:
        flight = "none in flight"
    again = " (it was cancelled already)" if result.already_cancelled else ""
    typer.echo(
        f"cancelled run {run}{again}: took {plural(result.messages_removed, 'waiting batch')} off the queue; "
        f"{flight}; {result.batches_done}/{plural(result.batches, 'batch')} done, results kept. "
        f"Remove it with `orchestration delete --run {run}`."
    )


@handle_errors
def delete_command(
    run: RunOption,
    force: Annotated[bool, typer.Option("--force", help="Delete even while batches of the run are in flight.")] = False,
    json_out: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
) -> None:
    """Delete a run: its manifest, results, timing records and poison records (cancelling it first).

    Refused (exit 2, the run left cancelled) while batches of it are in flight, unless --force.
    Deleting a run that is not there is no error.
    """
    settings = settings_for(config, log_level)
    result = delete_run(settings, run, force=force)
    if json_out:
        echo_json(result.to_dict())
    elif not result.existed:
        typer.echo(f"run {run} does not exist (nothing to delete)")
    else:
        typer.echo(
            f"deleted run {run}: {plural(result.objects_deleted, 'object')} from the result store, "
            f"{plural(result.messages_removed, 'waiting batch')} from the queue, "
            f"{plural(result.poison_records_removed, 'poison record')}"
        )


@handle_errors
def poison_command(
    run: Annotated[str | None, typer.Option("--run", help="Only this run's poisoned batches.")] = None,
    purge: Annotated[
        bool, typer.Option("--purge", help="Remove the poisoned batches' reports and poison-queue records.")
    ] = False,
    all_runs: Annotated[bool, typer.Option("--all", help="With --purge and no --run: purge every run's.")] = False,
    json_out: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
) -> None:
    """List poisoned batches (run, batch, attempts, time, reason), or --purge them.

    Purged batches have neither results nor a poison report: they count as missing, and
    `producer requeue --run R --missing` sends them again. To retry instead of removing them,
    fix the cause and run `producer requeue --run R --failed`.
    """
    if all_runs and run is not None:
        raise UsageError("give --run ID or --all, not both")
    if all_runs and not purge:
        raise UsageError("--all goes with --purge (listing shows every run's poisoned batches already)")
    if purge and run is None and not all_runs:
        raise UsageError("--purge removes poisoned batches for good: give --run ID, or --all for every run")
    settings = settings_for(config, log_level)
    if purge:
        purged = purge_poison(settings, run)
        if json_out:
            echo_json(purged.to_dict())
        else:
            typer.echo(
                f"purged {plural(purged.reports_removed, 'poison report')} and "
                f"{plural(purged.records_removed, 'record')} of {settings.queue}-poison"
                + (f" for run {run}" if run else "")
            )
        return
    entries = list_poison(settings, run)
    if json_out:
        echo_json([e.to_dict() for e in entries])
        return
    if not entries:
        typer.echo("no poisoned batches" + (f" in run {run}" if run else f" on queue {settings.queue}"))
        return
    for e in entries:
        typer.echo(
            f"{e.run_id}  {e.batch_id}  {plural(e.images, 'image')}  {e.attempts} attempt(s)  "
            f"{e.poisoned_at:%Y-%m-%d %H:%M:%S}  {e.reason}"
        )
    for hint in sorted({h for e in entries if (h := apply_hint(e.reason, e.run_id))}):
        typer.echo(f"note: {hint}")
    typer.echo(
        f"{plural(len(entries), 'poisoned batch')}: fix the cause, then `producer requeue --run R --failed`; "
        "or remove them with `orchestration poison --purge --run R`"
    )
