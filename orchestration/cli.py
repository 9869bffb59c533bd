"""`orchestration`: launch and scale the pool, watch it, measure the drain, export results, benchmark.

Every command reads the one settings object (WORKPOOL_* variables, --config FILE). Exit codes:
0 success, 1 failure during the work (a poisoned batch included), 2 bad usage or settings.

A thin shell over the Python API (orchestration/api, `from workpool import Pool, Run`): each
command parses its flags, calls one API method and prints. A new command goes in a module of its
own, registered here with one `app.command(...)` line.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from orchestration.api import Autoscale, Pool
from orchestration.backends import BACKENDS
from orchestration.commands import runs as run_commands
from orchestration.commands.dashboard import dashboard as dashboard_command
from orchestration.commands.logs import logs as logs_command
from orchestration.commands.options import BackendOption, JsonOption, RunOption, check_backend, echo_json
from orchestration.reports.drain import DrainReport
from orchestration.reports.report import RunReport
from orchestration.reports.status import render, watch
from orchestration.tools.benchmark import parse_tiers
from orchestration.tools.random_models import ARCHITECTURES
from workpool.cli import EXIT_FAILURE, EXIT_OK, ConfigOption, LogLevelOption, handle_errors, settings_for
from workpool.errors import UsageError, WorkpoolError

app = typer.Typer(
    help="Run the scoring pool: launch and scale nodes, watch progress, measure the drain, export results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ForceOption = Annotated[
    bool,
    typer.Option("--force", help="Start more nodes than the backend runs well (local: more than 4 per CPU core)."),
]

# The autoscaler's options, shared by `launch --autoscale` and `autoscale` (orchestration.api.Autoscale).
DeadlineOption = Annotated[
    str | None,
    typer.Option(
        "--deadline",
        help="Finish the queue's work by then: a duration (20m, 1h30m), a time of day (14:30, local) or an "
        "ISO time. Sizes the pool from the measured per-node rate, within the maximum.",
    ),
]
IdleOption = Annotated[
    float | None,
    typer.Option(
        "--idle-s",
        min=0,
        help="Seconds the queue stays empty (in flight included) before going to the minimum. "
        "Default: WORKPOOL_AUTOSCALE_IDLE_S (120).",
    ),
]
BatchesPerNodeOption = Annotated[
    float | None,
    typer.Option(
        "--batches-per-node",
        min=0.001,
        help="Visible batches that ask for one node. Default: WORKPOOL_AUTOSCALE_BATCHES_PER_NODE (4).",
    ),
]
CooldownOption = Annotated[
    float | None,
    typer.Option(
        "--cooldown-s",
        min=0,
        help="Seconds after a size change before the pool may shrink again. "
        "Default: WORKPOOL_AUTOSCALE_COOLDOWN_S (60).",
    ),
]
IntervalOption = Annotated[
    float | None,
    typer.Option(
        "--interval-s", min=0.1, help="Seconds between decisions. Default: WORKPOOL_AUTOSCALE_INTERVAL_S (5)."
    ),
]


def _pool(config: Path | None, log_level: str, backend: str | None = None, **flags: Any) -> Pool:
    """The API's pool on the settings these flags name; its progress lines go to stderr."""
    pool = Pool.from_settings(settings_for(config, log_level, **flags), backend=backend, config=config)
    pool.say = lambda line: typer.echo(line, err=True)
    return pool


app.command("dashboard")(dashboard_command)
app.command("logs")(logs_command)
# A run's life after enqueue: orchestration/commands/runs.py.
app.command("runs")(run_commands.runs_command)
app.command("cancel")(run_commands.cancel_command)
app.command("delete")(run_commands.delete_command)
app.command("poison")(run_commands.poison_command)


@app.command()
@handle_errors
def launch(
    nodes: Annotated[int | None, typer.Option("--nodes", min=0, help="How many nodes to start.")] = None,
    force: ForceOption = False,
    backend: Annotated[str, typer.Option("--backend", help=f"Where nodes run: {' | '.join(BACKENDS)}.")] = "local",
    autoscale_range: Annotated[
        str | None,
        typer.Option(
            "--autoscale",
            metavar="MIN:MAX",
            help="Instead of --nodes: size the pool from the queue between MIN and MAX nodes (0 allowed). "
            "The autoscaler runs detached beside the pool (log in <home>/autoscale/<queue>.log; teardown stops "
            "it), or in the foreground with --wait. Its options: --deadline, --idle-s, --batches-per-node, "
            "--cooldown-s, --interval-s (as for `autoscale`).",
        ),
    ] = None,
    deadline: DeadlineOption = None,
    idle_s: IdleOption = None,
    batches_per_node: BatchesPerNodeOption = None,
    cooldown_s: CooldownOption = None,
    interval_s: IntervalOption = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait until the queue's pending runs have drained, print their drain reports, then tear down.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be started or sent (secrets masked) and start nothing.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON: the nodes, the drain report(s) with --wait, or the plan.")
    ] = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = "INFO",
) -> None:
    """Start N nodes running `consumer run` on the queue.

    Returns once they are up; with --wait, once the queue's pending runs have drained (their
    drain reports are printed) and the nodes are torn down.
    """
    check_backend(backend)
    options = {"deadline": deadline, "idle_s": idle_s, "batches_per_node": batches_per_node}
    options |= {"cooldown_s": cooldown_s, "interval_s": interval_s}
    if autoscale_range is None and any(v is not None for v in options.values()):
        given = [f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None]
        raise UsageError(f"{', '.join(given)}: autoscaler options, for use with --autoscale MIN:MAX")
    scaling = None if autoscale_range is None else Autoscale.parse(autoscale_range, **options)
    if (nodes is None) == (scaling is None):
        raise UsageError("give --nodes N (a fixed size) or --autoscale MIN:MAX, one of them")
    pool = _pool(config, log_level, backend)
    if dry_run:
        count = scaling.min_nodes if scaling is not None else nodes
        planned = [
            {"method": r.method, "path": r.path, "body": r.body, "note": r.note}
            for r in pool.plan_launch(nodes, autoscale=scaling, force=force)
        ]
        if json_out:
            echo_json({"backend": backend, "nodes": count, "requests": planned})
        else:
            typer.echo(f"Would launch {count} node(s) on {backend} for queue {pool.queue}:")
            for r in planned:
                typer.echo(f"  {r['method']} {r['path']}" + (f"  # {r['note']}" if r["note"] else ""))
                if r["body"] is not None:
                    typer.echo("    " + json.dumps(r["body"], ensure_ascii=False, default=str))
        return
    if not wait:
        cluster = pool.launch(nodes, autoscale=scaling, force=force)
        if json_out:
            echo_json(cluster.to_dict())
        return
    reports = pool.launch_until_drained(nodes, autoscale=scaling, force=force)
    _print_reports(pool, reports, json_out)
    if not all(r.ok for r in reports):
        raise typer.Exit(EXIT_FAILURE)


def _print_reports(pool: Pool, reports: list[DrainReport], json_out: bool) -> None:
    """The drain reports, with the cost figures of `report` (node-seconds, cost, ...)."""
    shown = [_with_cost(pool, r) for r in reports]
    if json_out:
        echo_json(shown[0].to_json() if len(shown) == 1 else [r.to_json() for r in shown])
    else:
        for report in shown:
            typer.echo(report.render())


def _with_cost(pool: Pool, drain: DrainReport) -> DrainReport | RunReport:
    try:
        return pool.run(drain.run_id).report(drain=drain)
    except WorkpoolError as exc:  # the drain is what was waited for: report it without the cost figures
        typer.echo(f"warning: cost figures unavailable: {exc}", err=True)
        return drain


@app.command()
@handle_errors
def scale(
    nodes: Annotated[int, typer.Option("--nodes", min=0, help="The new number of nodes.")],
    force: ForceOption = False,
    backend: BackendOption = None,
    config: ConfigOption = None,
    log_level: LogLevelOption = "INFO",
) -> None:
    """Grow or shrink the running pool to M nodes.

    New nodes join the queue at once; extras stop gracefully (SIGTERM: their batch is
    released, not lost). Works from any shell while `launch --wait` or a run is going.
    """
    check_backend(backend)
    _pool(config, log_level, backend).scale(nodes, force=force)


@app.command()
@handle_errors
def status(
    run: Annotated[
        str | None, typer.Option("--run", help="Show this run only (default: runs still going, else the latest).")
    ] = None,
    json_out: JsonOption = False,
    watch_: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Live view with progress bars, refreshed every second (Ctrl-C to leave; ends when --run finishes).",
        ),
    ] = False,
    backend: BackendOption = None,
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
) -> None:
    """Queue depth and poison count, nodes and their state, and per run.

    Per run: batches done/total, poisoned, images ok/failed, images/s over the last minute, ETA.
    """
    check_backend(backend)
    reader = _pool(config, log_level, backend).status_reader(run)
    if watch_:
        watch(reader, Console())
        return
    snap = reader.snapshot()
    if json_out:
        echo_json(snap.to_json())
    else:
        Console().print(render(snap))


@app.command("wait")
@handle_errors
def wait_command(
    run: RunOption,
    json_out: JsonOption = False,
    timeout_s: Annotated[
        float | None, typer.Option("--timeout-s", help="Give up (exit 1) after this many seconds.")
    ] = None,
    poll_s: Annotated[float, typer.Option("--poll-s", help="Seconds between looks at the records.")] = 1.0,
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
) -> None:
    """Block until every batch of the run is acked or poisoned, then print its drain report.

    The drain wall time runs from the run's first dequeue to its last ack, read from the batch
    records. Exit 1 if any batch was poisoned, or lost (the queue emptied without it), or the
    run was cancelled. With no node running (and no autoscaler), it says so at once.
    """
    pool = _pool(config, log_level)
    handle = pool.run(run)
    if (notice := run_commands.no_nodes_notice(pool.settings, run)) is not None:
        typer.echo(notice, err=True)
    report = handle.wait(timeout_s, poll_s=poll_s, progress=False)
    _print_reports(pool, [report], json_out)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_FAILURE)


@app.command()
@handle_errors
def results(
    run: RunOption,
    out: Annotated[Path, typer.Option("--out", help="Output file: .csv, .jsonl or .parquet (chosen by the suffix).")],
    json_out: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
) -> None:
    """Export one row per input image, in manifest order.

    Columns: image, status, error, top_label, top_score, predictions (JSON text in CSV and
    Parquet), batch_id, worker. Images of a poisoned batch are error rows with the reason.
    """
    summary = _pool(config, log_level).run(run).export(out)
    if json_out:
        echo_json(summary.to_json())
    else:
        typer.echo(f"wrote {summary.rows} rows to {summary.path} ({summary.ok} ok, {summary.failed} error)")
    if summary.pending:
        typer.echo(f"warning: run {run} is not finished: {summary.pending} image(s) have no result yet", err=True)


@app.command()
@handle_errors
def teardown(
    delete: Annotated[
        bool, typer.Option("--delete", help="Also delete the cluster or pool (local: its state and logs).")
    ] = False,
    backend: BackendOption = None,
    config: ConfigOption = None,
    log_level: LogLevelOption = "INFO",
) -> None:
    """Stop every node (gracefully: in-flight batches are released) and forget the pool."""
    check_backend(backend)
    _pool(config, log_level, backend).teardown(delete=delete)


@app.command()
@handle_errors
def autoscale(
    min_nodes: Annotated[int, typer.Option("--min", min=0, help="Fewest nodes (0: scale to zero when idle).")],
    max_nodes: Annotated[int, typer.Option("--max", min=1, help="Most nodes, whatever the backlog or deadline.")],
    deadline: DeadlineOption = None,
    idle_s: IdleOption = None,
    batches_per_node: BatchesPerNodeOption = None,
    cooldown_s: CooldownOption = None,
    interval_s: IntervalOption = None,
    backend: BackendOption = None,
    config: ConfigOption = None,
    log_level: LogLevelOption = "INFO",
) -> None:
    """Size the running pool from its queue until stopped (Ctrl-C, SIGTERM, or teardown).

    Nodes for the visible backlog (--batches-per-node each); batches in flight keep the nodes
    that hold them but never ask for new ones; --deadline adds nodes from the measured
    per-node rate; an empty queue scales to --min after --idle-s, and new messages scale up
    from zero at once; shrinking waits --cooldown-s after a change. Every decision is logged
    with its inputs and shown by `status`. The pool must be running (`launch --nodes 0` or
    `launch --autoscale MIN:MAX`, which starts this loop itself).
    """
    from orchestration.autoscale.loop import PoolGoneError

    check_backend(backend)
    options = Autoscale(min_nodes, max_nodes, deadline, idle_s, batches_per_node, cooldown_s, interval_s)
    pool = _pool(config, log_level, backend)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        pool.autoscale(options, stop)
    except PoolGoneError as exc:
        typer.echo(f"error: {exc}; the autoscaler stops", err=True)
        raise typer.Exit(EXIT_FAILURE) from None


@app.command()
@handle_errors
def benchmark(
    tiers: Annotated[str, typer.Option("--tiers", help="Node counts to compare, like 1,2,4.")] = "1,2,4",
    images: Annotated[int, typer.Option("--images", min=1, help="Images per tier (the same images every tier).")] = 256,
    arch: Annotated[
        str | None,
        typer.Option("--arch", help=f"Build a random-weight model: {' | '.join(ARCHITECTURES)} (default inceptionv3)."),
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Score with this model URI instead of --arch.")] = None,
    task: Annotated[
        str, typer.Option("--task", help="classification, cloth_recognition or pkg.module:Class.")
    ] = "classification",
    labels: Annotated[str | None, typer.Option("--labels", help="Labels URI for the task.")] = None,
    source: Annotated[
        str | None,
        typer.Option("--source", help="Images to score (directory or az://). Default: synthetic JPEGs under <home>."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per batch message.")] = None,
    backend: Annotated[str, typer.Option("--backend", help=f"Where nodes run: {' | '.join(BACKENDS)}.")] = "local",
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG of wall time and speedup vs nodes.")] = None,
    timeout_s: Annotated[float | None, typer.Option("--timeout-s", help="Give up on a tier after this long.")] = None,
    json_out: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
) -> None:
    """Time the same images at each node count and print the scale-tier table (speedup, efficiency).

    Each tier is a fresh run: enqueue, launch that many nodes, wait for the drain, tear down.
    Needs an idle queue. Example: `orchestration benchmark --tiers 1,2,4 --images 256 --plot bench.png`
    """
    check_backend(backend)
    tier_list = parse_tiers(tiers)
    pool = _pool(config, log_level, backend)
    table = pool.benchmark(
        source, tiers=tier_list, images=images, task=task, model=model, arch=arch, labels=labels,
        batch_size=batch_size, timeout_s=timeout_s,
    )  # fmt: skip
    if plot is not None:
        from orchestration.reports.plot import plot_benchmark

        plot_benchmark(table.result, plot)
        typer.echo(f"wrote {plot}", err=True)
    if json_out:
        echo_json(table.to_json())
    else:
        typer.echo(str(table))
    if not table.ok:
        raise typer.Exit(EXIT_FAILURE)


@app.command()
@handle_errors
def report(
    run: RunOption,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", help="Write the run's timeline as a PNG: a lane per worker, the backlog and the pool size."
        ),
    ] = None,
    price_per_node_hour: Annotated[
        float | None,
        typer.Option(
            "--price-per-node-hour",
            min=0,
            help="Price of one node for an hour, for the cost figures (default: WORKPOOL_PRICE_PER_NODE_HOUR).",
        ),
    ] = None,
    json_out: JsonOption = False,
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
) -> None:
    """What a run cost and how it went: the drain report plus node-seconds, cost, a timeline.

    Node-seconds are the pool's size (from its event log: launch, scale, autoscale, teardown)
    from the run's enqueue to its last ack; cost = node-seconds × price per node-hour ÷ 3600,
    also per 1,000 images. Works on a finished or a running run, from any machine.
    Example: `orchestration report --run photos-1 --plot photos-1.png --price-per-node-hour 3.67`
    """
    pool = _pool(config, log_level, price_per_node_hour=price_per_node_hour)
    result = pool.run(run).report()
    if plot is not None:
        from orchestration.reports.timeline_plot import plot_timeline

        plot_timeline(result, plot)
        typer.echo(f"wrote {plot}", err=True)
    if json_out:
        echo_json(result.to_json())
    else:
        typer.echo(result.render())
