"""`consumer run`: score batches from the work queue until stopped or idle.

Every flag is also a setting (`WORKPOOL_<NAME>` or the config file); flags win.
SIGTERM/SIGINT are caught from the process's first line (consumer/__main__.py,
workpool/processes/signals.py); this module only asks `signals.received()`.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Literal

import typer
from PIL import Image

from consumer.accelerator import check_accelerator
from consumer.gpu_fanout import run_workers, visible_gpus, worker_count, write_totals
from consumer.runner import Consumer, default_worker_id
from workpool.cli import EXIT_FAILURE, ConfigOption, LogLevelOption, handle_errors, settings_for
from workpool.errors import UsageError, WorkpoolError
from workpool.handoff import child_env
from workpool.processes import signals
from workpool.processes.readiness import mark_ready
from workpool.settings import Settings

# Settings handed to consumers (tagged `to_consumers` in its workpool/settings/ group) that `consumer run`
# takes from the environment or the config file only, never as a flag, and why. Every other
# consumer setting is a flag of `consumer run`; tests/test_settings_handoff.py holds the two
# lists to the tags, so a new consumer setting is either given a flag or listed here.
ENVIRONMENT_ONLY: dict[str, str] = {
    "home": "the embedded storage's folder: where the launcher put it",
    "queue": "which queue a node serves is its pool's, set where the pool is launched",
    "results": "the result store goes with the queue",
    "connection_string": "a secret: never on a command line, where `ps` shows it",
    "account_url": "storage credentials travel together, in the environment",
    "sas_token": "a secret: never on a command line, where `ps` shows it",
    "batch_size": "the producer's batch size, used only to warm WORKPOOL_MODEL at the right shape",
    "message_ttl_s": "the time-to-live of the messages the producer sends; consumers send none",
    "stop_finish_s": "set on the nodes of an autoscaled pool by the launcher, not by hand",
    "model_cache": "a path of this machine: the node's own disk",
    "scheduled_events_url": "the metadata service's address: set on cluster nodes by the launcher",
    "node_workers": "read by the local supervisor, which gives nodes `--workers` on their command line",
    # What a queue message may make a consumer read and run (docs/security.md): the operator's policy for
    # the whole pool, handed to every node with the pool's environment, never a per-process choice.
    "task_modules": "the operator's trust policy for the pool (docs/security.md), set where the pool is launched",
    "read_containers": "the operator's trust policy for the pool (docs/security.md), set where the pool is launched",
    "local_roots": "the operator's trust policy for the pool (docs/security.md); cluster nodes get `none`",
    "max_image_bytes": "a size cap of the pool's trust policy (docs/security.md)",
    "max_model_bytes": "a size cap of the pool's trust policy (docs/security.md)",
    "max_labels_bytes": "a size cap of the pool's trust policy (docs/security.md)",
}

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Score image batches from the work queue.")
log = logging.getLogger("consumer")


@app.callback()
def main() -> None:
    """Score image batches from the work queue."""


@app.command()
@handle_errors
def run(
    config: ConfigOption = None,
    workers: Annotated[
        str,
        typer.Option("--workers", help="Worker processes: 'auto' (one per visible GPU, one without GPUs) or a number."),
    ] = "auto",
    worker_id: Annotated[
        str | None, typer.Option("--worker-id", help="Name in results and logs (default <host>-<pid>).")
    ] = None,
    idle_exit_s: Annotated[
        float | None,
        typer.Option("--idle-exit-s", help="Exit after the queue has been empty this long (default: never)."),
    ] = None,
    visibility_timeout_s: Annotated[
        int | None, typer.Option("--visibility-timeout-s", help="Lease on a received batch, renewed in the background.")
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option("--max-attempts", help="Deliveries before a failing batch is dead-lettered (default 5)."),
    ] = None,
    prefetch_batches: Annotated[
        int | None, typer.Option("--prefetch-batches", help="Batches received and decoded ahead (default 1).")
    ] = None,
    decode_threads: Annotated[
        int | None, typer.Option("--decode-threads", help="Image decode threads (default: one per core).")
    ] = None,
    precision: Annotated[
        Literal["float32", "mixed"] | None,
        typer.Option("--precision", help="float32, or mixed (float16 compute on GPUs)."),
    ] = None,
    xla: Annotated[bool | None, typer.Option("--xla/--no-xla", help="Compile the model call with XLA.")] = None,
    allow_unsafe_models: Annotated[
        bool | None,
        typer.Option("--allow-unsafe-models", help="Allow models whose loading runs Python code (Lambda layers)."),
    ] = None,
    allow_cpu: Annotated[
        bool | None,
        typer.Option("--allow-cpu", help="Score on the CPU even when the machine has GPUs TensorFlow cannot see."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Model URI to load and warm before the first batch (pending runs' models are warmed anyway).",
        ),
    ] = None,
    log_level: LogLevelOption = "INFO",
    totals_file: Annotated[
        Path | None,
        typer.Option("--totals-file", hidden=True, help="Where a worker of `--workers N` keeps its totals (JSON)."),
    ] = None,
    parent_pid: Annotated[
        int | None,
        typer.Option("--parent-pid", hidden=True, help="A worker of `--workers N`: stop when this parent is gone."),
    ] = None,
) -> None:
    """Dequeue, score and ack batches. Last line: 'Worker <id> Processed <n> images, took <H:MM:SS.ffffff>'."""
    # Every option named after a setting is that setting's flag (derived, so none is forgotten).
    flags = {name: value for name, value in locals().items() if name in Settings.model_fields}
    settings = settings_for(config, log_level, **flags)
    if workers != "auto" and not (workers.isdigit() and int(workers) >= 1):
        raise UsageError(f"--workers: expected 'auto' or a positive number, got {workers!r}")
    gpus = visible_gpus()
    count = worker_count(workers, gpus)
    if count > 1 or (gpus and "CUDA_VISIBLE_DEVICES" not in os.environ):
        # One worker process per GPU (or per --workers), kept running; children inherit the environment.
        # Workers get the settings this process resolved (config file, environment, flags) through
        # the one hand-off every child gets, derived from the settings' tags.
        base_id, extra_args = worker_id or default_worker_id(), [f"--log-level={log_level}"]
        mark_ready()  # settings are valid; a worker that then fails is restarted (and counted) by run_workers
        code = run_workers(base_id, count, gpus, extra_args, env=child_env(settings), stop_when=_stop_reason)
        raise typer.Exit(code)

    check_accelerator(
        settings.allow_cpu, settings.vm_size
    )  # no GPU where one was meant: refuse, never crawl on the CPU
    # Refuse decompression bombs between Pillow's limit and twice it (Pillow only warns there).
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    consumer = Consumer(settings, worker_id)

    reported = [-1]  # images in the totals file

    def report(final: bool = False) -> None:
        """Keep the parent's totals file current (`--workers N`): it survives this process dying."""
        if totals_file is not None and (final or reported[0] != consumer.images_processed):
            reported[0] = consumer.images_processed
            write_totals(totals_file, consumer.worker_id, consumer.images_processed, final=final)

    log.info("worker %s: consuming queue %s (%s)", consumer.worker_id, settings.queue, settings.storage_mode.value)
    mark_ready()  # past the start-up checks: a launch waiting on this node can return

    def stop_reason() -> str | None:
        # A worker of `--workers N` whose parent is gone (killed outright) stops too: nobody
        # would stop it otherwise. (The parent says who it is: it may be gone before we look.)
        if parent_pid is not None and os.getppid() != parent_pid:
            return "its --workers parent is gone"
        return _stop_reason()

    consumer.run(stop_when=stop_reason, tick=report)
    report(final=True)
    print(consumer.summary_line(), flush=True)
    if isinstance(consumer.error, WorkpoolError):
        raise consumer.error  # handle_errors: one line on stderr, exit 1 (2 for bad settings)
    if consumer.error is not None:
        typer.echo(f"error: worker stopped: {type(consumer.error).__name__}: {consumer.error}", err=True)
        raise typer.Exit(EXIT_FAILURE)
    if consumer.abandoned:
        # The worker thread is inside a model call that cannot be interrupted; its batch has
        # been released already (`give_back`). Returning would leave the process waiting for that
        # thread at exit, forever if the call never returns (the interpreter joins pool threads):
        # tests/test_consumer_stuck.py shows it. The only way left is a hard exit.
        sys.stderr.flush()
        os._exit(0)


def _stop_reason() -> str | None:
    received = signals.received()
    return None if received is None else f"{received.name} received"
