"""`orchestration logs`: the consumers' own log lines, from wherever the pool's nodes run.

Each backend says where its consumers' output is (`Launcher.log_sources`, orchestration/
launcher.py): the local nodes' log files, each Azure Batch consumer task's stdout.txt and
stderr.txt (through the Batch API), an AML job's logs. Lines are printed with the node they
come from, secrets redacted (workpool/logs.py). `--follow` reads only what was added since the
last look (a byte range), so following a long log stays cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

import typer

from orchestration.backends import open_launcher
from orchestration.commands.options import BackendOption, check_backend
from orchestration.deployment import resolve_backend
from orchestration.launcher import Launcher, LogSource
from workpool.cli import ConfigOption, LogLevelOption, handle_errors, settings_for
from workpool.errors import UsageError
from workpool.logs import redact

# Bytes read back from a log's end per line asked for by --tail (doubled until enough lines).
TAIL_BYTES_PER_LINE = 512


def run_filter(run_id: str | None) -> Callable[[str], bool]:
    """--run: the lines about that run (the worker logs each batch as `run=<id> batch=<id>`)."""
    if run_id is None:
        return lambda line: True
    mark = f"run={run_id} "
    return lambda line: mark in line + " "


def select(sources: list[LogSource], node: str | None) -> list[LogSource]:
    if node is None:
        return sources
    chosen = [s for s in sources if node == s.node or node in s.aliases]
    if not chosen:
        known = sorted({s.node for s in sources})
        raise UsageError(f"--node {node}: no such node with a log (known: {', '.join(known) or 'none'})")
    return chosen


def split_lines(data: bytes) -> tuple[list[str], bytes]:
    """Complete lines (decoded), and the unfinished rest."""
    *lines, rest = data.split(b"\n")
    return [line.decode("utf-8", "replace").rstrip("\r") for line in lines], rest


def tail_lines(source: LogSource, count: int, keep: Callable[[str], bool]) -> tuple[list[str], int]:
    """The last `count` kept lines of a log, and the offset its end was read to."""
    size = source.size() or 0
    window = max(count, 1) * TAIL_BYTES_PER_LINE
    while True:
        start = max(size - window, 0)
        data = source.read(start)
        lines, rest = split_lines(data)
        if start > 0 and lines:
            lines = lines[1:]  # the first one may begin before the window
        kept = [line for line in lines if keep(line)]
        if len(kept) >= count or start == 0:
            return kept[-count:] if count else [], start + len(data) - len(rest)
        window *= 4


class Follower:
    """Prints each source's new complete lines, remembering where each was read to."""

    def __init__(self, keep: Callable[[str], bool], secrets: list[str], echo: Callable[[str], None]) -> None:
        self.keep = keep
        self.secrets = secrets
        self.echo = echo
        self.offsets: dict[tuple[str, str], int] = {}
        self.labelled = True

    def show(self, source: LogSource, lines: list[str]) -> None:
        for line in lines:
            if self.keep(line):
                text = redact(line, self.secrets)
                self.echo(f"{source.label} | {text}" if self.labelled else text)

    def start(self, source: LogSource, tail: int | None) -> None:
        key = (source.label, source.stream)
        if tail is not None:
            lines, offset = tail_lines(source, tail, self.keep)
        else:
            data = source.read(0)
            lines, rest = split_lines(data)
            offset = len(data) - len(rest)
        self.offsets[key] = offset
        self.show(source, lines)

    def poll(self, source: LogSource) -> None:
        key = (source.label, source.stream)
        if key not in self.offsets:  # a node started since: all of its log
            self.start(source, None)
            return
        size = source.size()
        offset = self.offsets[key]
        if size is None or size == offset:
            return
        if size < offset:  # the file was started again (a relaunched pool): from its beginning
            offset = 0
        data = source.read(offset)
        lines, rest = split_lines(data)
        self.offsets[key] = offset + len(data) - len(rest)
        self.show(source, lines)


def show_logs(
    launcher: Launcher,
    *,
    node: str | None,
    run: str | None,
    tail: int | None,
    follow: bool,
    secrets: list[str],
    echo: Callable[[str], None],
    interval_s: float = 1.0,
) -> int:
    """Print the logs (and, with `follow`, what is added until interrupted); the sources read."""
    sources = select(launcher.log_sources(), node)
    follower = Follower(run_filter(run), secrets, echo)
    follower.labelled = len(sources) != 1 or follow
    for source in sources:
        follower.start(source, tail)
    while follow:
        time.sleep(interval_s)
        for source in select(launcher.log_sources(), node):
            follower.poll(source)
    return len(sources)


@handle_errors
def logs(
    node: Annotated[
        str | None, typer.Option("--node", help="Only this node (as `status` names it; Azure Batch: or its task id).")
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Only the lines about this run (`run=<id>` in the consumer's lines).")
    ] = None,
    tail: Annotated[int | None, typer.Option("--tail", min=0, help="Only the last N lines of each node's log.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines as they come (Ctrl-C to stop).")
    ] = False,
    backend: BackendOption = None,
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
) -> None:
    """The consumers' own log lines, each with its node, secrets redacted.

    Local: each node's log file (kept after it stops, until `teardown --delete`). Azure Batch:
    each consumer task's stdout.txt and stderr.txt, read through the Batch API. Example:
    `orchestration logs --node myhost-node-2 --tail 50 --follow`.
    """
    check_backend(backend)
    settings = settings_for(config, log_level)
    launcher = open_launcher(resolve_backend(settings, backend), settings)
    try:
        found = show_logs(
            launcher,
            node=node,
            run=run,
            tail=tail,
            follow=follow,
            secrets=settings.secret_values(),
            echo=lambda line: typer.echo(line),
        )
    except KeyboardInterrupt:  # the way --follow ends
        return
    if not found:
        typer.echo(f"no consumer logs for queue {settings.queue} on {launcher.name} (no node has run)", err=True)
