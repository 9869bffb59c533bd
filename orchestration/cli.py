"""`orchestration`: launch and scale the pool, watch it, measure the drain, export results, benchmark.

Every command reads the one settings object (WORKPOOL_* variables, --config FILE). Exit codes:
0 success, 1 failure during the work (a poisoned batch included), 2 bad usage or settings.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from orchestration.autoscale import process as autoscale_process
from orchestration.autoscale.deadline import parse_deadline
from orchestration.autoscale.loop import PoolGoneError
from orchestration.autoscale.policy import Limits, parse_range
from orchestration.backends import BACKENDS, open_launcher
from orchestration.commands.dashboard import dashboard as dashboard_command
from orchestration.commands.logs import logs as logs_command
from orchestration.deployment import resolve_backend
from orchestration.launcher import Launcher
from orchestration.pool import launch_until_drained, pending_runs
from orchestration.reports.drain import DrainReport, wait_for_drain
from orchestration.reports.export import export_results
from orchestration.reports.plot import plot_benchmark
from orchestration.reports.report import RunReport, build_report
from orchestration.reports.status import StatusReader, cluster_json, render, watch
from orchestration.tools.benchmark import BenchmarkPlan, parse_tiers, render_table, run_benchmark
from orchestration.tools.random_models import ARCHITECTURES, build_model
from orchestration.tools.samples import write_samples
from workpool.cli import EXIT_FAILURE, EXIT_OK, ConfigOption, LogLevelOption, handle_errors, settings_for
from workpool.errors import NotFoundError, UsageError, WorkpoolError
from workpool.pool_events import record_size_change, utcnow
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

app = typer.Typer(
    help="Run the scoring pool: launch and scale nodes, watch progress, measure the drain, export results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help=f"Where nodes run: {' | '.join(BACKENDS)}. Default: the one that launched this queue's pool, else local.",
    ),
]
RunOption = Annotated[str, typer.Option("--run", help="Run id (as given to or printed by `producer enqueue`).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]
ForceOption = Annotated[
    bool,
    typer.Option("--force", help="Start more nodes than the backend runs well (local: more than 4 per CPU core)."),
]


def _runs(settings: Settings) -> RunStore:
    return RunStore(open_result_store(settings))


def _require_run(runs: RunStore, run_id: str) -> None:
    """A run id that names no run is the user's mistake (exit 2), as in `producer requeue`."""
    try:
        runs.read_manifest(run_id)
    except NotFoundError as exc:
        raise UsageError(str(exc)) from None


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _check_backend(backend: str | None) -> None:
    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")


app.command("dashboard")(dashboard_command)
app.command("logs")(logs_command)


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
            "it), or in the foreground with --wait. Its other settings: WORKPOOL_AUTOSCALE_* (see `autoscale`).",
        ),
    ] = None,
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
    _check_backend(backend)
    if (nodes is None) == (autoscale_range is None):
        raise UsageError("give --nodes N (a fixed size) or --autoscale MIN:MAX, one of them")
    settings = settings_for(config, log_level)
    launcher = open_launcher(backend, settings)
    if autoscale_range is not None and not dry_run:
        _launch_autoscaled(settings, launcher, autoscale_range, wait, json_out, config)
        return
    nodes = nodes if nodes is not None else parse_range(autoscale_range or "")[0]
    if dry_run:
        planned = [
            {"method": r.method, "path": r.path, "body": r.body, "note": r.note}
            for r in launcher.describe(nodes, force=force)
        ]
        if json_out:
            _echo_json({"backend": backend, "nodes": nodes, "requests": planned})
        else:
            typer.echo(f"Would launch {nodes} node(s) on {backend} for queue {settings.queue}:")
            for r in planned:
                typer.echo(f"  {r['method']} {r['path']}" + (f"  # {r['note']}" if r["note"] else ""))
                if r["body"] is not None:
                    typer.echo("    " + json.dumps(r["body"], ensure_ascii=False, default=str))
        return
    if not wait:
        requested_at = utcnow()
        launcher.launch(nodes, force=force)
        record_size_change(settings, "launch", backend, nodes, at=requested_at, reason="launch --nodes")
        typer.echo(f"launched {nodes} node(s) on {backend} for queue {settings.queue}", err=True)
        if json_out:
            _echo_json(cluster_json(launcher.state()))
        return
    reports = launch_until_drained(settings, launcher, nodes, force=force, say=lambda line: typer.echo(line, err=True))
    _print_reports(reports, json_out, settings)
    if not all(r.ok for r in reports):
        raise typer.Exit(EXIT_FAILURE)


def _launch_autoscaled(
    settings: Settings, launcher: Launcher, text: str, wait: bool, json_out: bool, config: Path | None
) -> None:
    """`launch --autoscale MIN:MAX`: the pool at the size the queue asks for, and its autoscaler."""
    low, high = parse_range(text)
    settings = autoscale_process.with_finishing_nodes(settings)
    launcher = open_launcher(launcher.name, settings)
    scaler = autoscale_process.build(settings, launcher, autoscale_process.limits_from(settings, low, high))

    def say(line: str) -> None:
        typer.echo(line, err=True)

    if wait:
        runs = pending_runs(settings, scaler.runs)
        try:
            reports = autoscale_process.autoscale_until_drained(scaler, runs, say=say)
        finally:
            launcher.teardown()
            record_size_change(settings, "teardown", launcher.name, 0, reason="drained (launch --autoscale --wait)")
            say(f"tore down the {launcher.name} pool")
        _print_reports(reports, json_out, settings)
        if not all(r.ok for r in reports):
            raise typer.Exit(EXIT_FAILURE)
        return
    requested_at = utcnow()
    size = autoscale_process.launch_with_autoscaler(scaler)
    record_size_change(settings, "launch", launcher.name, size, at=requested_at, reason=f"launch --autoscale {text}")
    pid = autoscale_process.start_detached(settings, launcher.name, low, high, None, config)
    say(
        f"launched {size} node(s) on {launcher.name} for queue {settings.queue}; autoscaler pid {pid} sizes it "
        f"between {low} and {high} (log: {autoscale_process.log_path(settings)})"
    )
    if json_out:
        _echo_json(cluster_json(launcher.state()))


def _print_reports(reports: list[DrainReport], json_out: bool, settings: Settings) -> None:
    """The drain reports, with the cost figures of `report` (node-seconds, cost, ...)."""
    shown = [_with_cost(settings, r) for r in reports]
    if json_out:
        _echo_json(shown[0].to_json() if len(shown) == 1 else [r.to_json() for r in shown])
    else:
        for report in shown:
            typer.echo(report.render())


def _with_cost(settings: Settings, drain: DrainReport) -> DrainReport | RunReport:
    try:
        price = settings.price_per_node_hour
        return build_report(_runs(settings), drain.run_id, price_per_node_hour=price, drain=drain)
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
    _check_backend(backend)
    settings = settings_for(config, log_level)
    name = resolve_backend(settings, backend)
    requested_at = utcnow()
    open_launcher(name, settings).scale(nodes, force=force)
    record_size_change(settings, "scale", name, nodes, at=requested_at, reason="scale --nodes")
    typer.echo(f"scaled the {name} pool of queue {settings.queue} to {nodes} node(s)", err=True)


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
    _check_backend(backend)
    settings = settings_for(config, log_level)
    launcher = open_launcher(resolve_backend(settings, backend), settings)
    runs = _runs(settings)
    if run is not None:
        _require_run(runs, run)
    reader = StatusReader(runs, open_queue(settings), launcher, run)
    if watch_:
        watch(reader, Console())
        return
    snap = reader.snapshot()
    if json_out:
        _echo_json(snap.to_json())
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
    records. Exit 1 if any batch was poisoned, or lost (the queue emptied without it).
    """
    settings = settings_for(config, log_level)
    runs = _runs(settings)
    _require_run(runs, run)
    report = wait_for_drain(runs, open_queue(settings), run, poll_s=poll_s, timeout_s=timeout_s)
    _print_reports([report], json_out, settings)
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
    settings = settings_for(config, log_level)
    runs = _runs(settings)
    _require_run(runs, run)
    summary = export_results(runs, run, out)
    if json_out:
        _echo_json(summary.to_json())
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
    _check_backend(backend)
    settings = settings_for(config, log_level)
    name = resolve_backend(settings, backend)
    # The autoscaler first: it would otherwise scale the pool back up while it is torn down.
    if (stopped := autoscale_process.stop_detached(settings)) is not None:
        typer.echo(f"stopped the autoscaler (pid {stopped})", err=True)
    open_launcher(name, settings).teardown(delete=delete)
    record_size_change(settings, "teardown", name, 0, reason="teardown")
    typer.echo(f"tore down the {name} pool of queue {settings.queue}", err=True)


@app.command()
@handle_errors
def autoscale(
    min_nodes: Annotated[int, typer.Option("--min", min=0, help="Fewest nodes (0: scale to zero when idle).")],
    max_nodes: Annotated[int, typer.Option("--max", min=1, help="Most nodes, whatever the backlog or deadline.")],
    deadline: Annotated[
        str | None,
        typer.Option(
            "--deadline",
            help="Finish the queue's work by then: a duration (20m, 1h30m), a time of day (14:30, local) or an "
            "ISO time. Sizes the pool from the measured per-node rate, within --max.",
        ),
    ] = None,
    idle_s: Annotated[
        float | None,
        typer.Option(
            "--idle-s",
            min=0,
            help="Seconds the queue stays empty (in flight included) before going to "
            "--min. Default: WORKPOOL_AUTOSCALE_IDLE_S (120).",
        ),
    ] = None,
    batches_per_node: Annotated[
        float | None,
        typer.Option(
            "--batches-per-node",
            min=0.001,
            help="Visible batches that ask for one node. Default: WORKPOOL_AUTOSCALE_BATCHES_PER_NODE (4).",
        ),
    ] = None,
    cooldown_s: Annotated[
        float | None,
        typer.Option(
            "--cooldown-s",
            min=0,
            help="Seconds after a size change before the pool may shrink again. "
            "Default: WORKPOOL_AUTOSCALE_COOLDOWN_S (60).",
        ),
    ] = None,
    interval_s: Annotated[
        float | None,
        typer.Option(
            "--interval-s", min=0.1, help="Seconds between decisions. Default: WORKPOOL_AUTOSCALE_INTERVAL_S (5)."
        ),
    ] = None,
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
    _check_backend(backend)
    settings = settings_for(config, log_level)
    name = resolve_backend(settings, backend)
    limits = Limits(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        batches_per_node=settings.autoscale_batches_per_node if batches_per_node is None else batches_per_node,
        idle_s=settings.autoscale_idle_s if idle_s is None else idle_s,
        cooldown_s=settings.autoscale_cooldown_s if cooldown_s is None else cooldown_s,
    )
    until = None if deadline is None else parse_deadline(deadline, utcnow())
    launcher = open_launcher(name, settings)
    scaler = autoscale_process.build(settings, launcher, limits, deadline=until, interval_s=interval_s)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    typer.echo(
        f"autoscaling the {name} pool of queue {settings.queue} between {min_nodes} and {max_nodes} node(s)"
        + (f", deadline {until.isoformat(timespec='seconds')}" if until else ""),
        err=True,
    )
    try:
        scaler.run(stop)
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
    _check_backend(backend)
    tier_list = parse_tiers(tiers)
    settings = settings_for(config, log_level)
    if arch is not None and model is not None:
        raise UsageError("give --arch or --model, not both")
    if task == "classification" and model is None:
        if backend != "local":
            raise UsageError("cluster nodes cannot read a model built here: give --model az://<container>/<path>")
        model = str(build_model(arch or "inceptionv3", settings.home / "models"))
    elif arch is not None:
        model = str(build_model(arch, settings.home / "models"))
    if source is None:
        if backend != "local":
            raise UsageError("cluster nodes cannot read images generated here: give --source az://<container>/<prefix>")
        folder = settings.home.absolute() / "benchmark" / "images"
        write_samples(folder, images)
        source = str(folder)
    plan = BenchmarkPlan(
        tiers=tier_list,
        images=images,
        source=source,
        task=task,
        model=model,
        labels=labels,
        backend=backend,
        batch_size=batch_size,
        timeout_s=timeout_s,
    )
    result = run_benchmark(settings, plan, open_launcher, say=lambda line: typer.echo(line, err=True))
    if plot is not None:
        plot_benchmark(result, plot)
        typer.echo(f"wrote {plot}", err=True)
    if json_out:
        _echo_json(result.to_json())
    else:
        typer.echo(render_table(result))
    if not result.ok:
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
    settings = settings_for(config, log_level, price_per_node_hour=price_per_node_hour)
    runs = _runs(settings)
    _require_run(runs, run)
    result = build_report(runs, run, price_per_node_hour=settings.price_per_node_hour)
    if plot is not None:
        from orchestration.reports.timeline_plot import plot_timeline

        plot_timeline(result, plot)
        typer.echo(f"wrote {plot}", err=True)
    if json_out:
        _echo_json(result.to_json())
    else:
        typer.echo(result.render())
