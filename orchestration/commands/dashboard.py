"""`orchestration dashboard`: serve the live page until Ctrl-C."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
from typing import Annotated

import typer

from orchestration.backends import open_launcher
from orchestration.commands.options import BackendOption, check_backend
from orchestration.deployment import resolve_backend
from orchestration.reports.status import StatusReader
from workpool.cli import ConfigOption, LogLevelOption, handle_errors, settings_for
from workpool.errors import NotFoundError, UsageError
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.storage import open_result_store


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_token(host: str, given: str | None) -> tuple[str | None, bool]:
    """The token requests need, and whether it was generated here (then printed once).

    On a loopback address no token is needed unless one is given; on any other, one is.
    """
    if given is not None:
        if len(given) < 16:
            raise UsageError("--token (or WORKPOOL_DASHBOARD_TOKEN): expected at least 16 characters")
        return given, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(32), True


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    sock.listen(128)
    return sock


@handle_errors
def dashboard(
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to listen on. Any but a loopback one needs a token (generated if not given)."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="WORKPOOL_DASHBOARD_TOKEN",
            show_envvar=True,
            help="Require this token (16+ characters) on every request. Prefer the variable: a flag shows in `ps`.",
        ),
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Show this run only (default: runs still going, else the latest).")
    ] = None,
    interval_s: Annotated[
        float, typer.Option("--interval-s", min=0.2, max=2.0, help="Seconds between refreshes of the data.")
    ] = 1.0,
    backend: BackendOption = None,
    config: ConfigOption = None,
    log_level: LogLevelOption = "WARNING",
) -> None:
    """A live web page of the pool: queue, runs, nodes, charts, poisoned batches, cost.

    Serves until Ctrl-C. Read-only. Listens on 127.0.0.1 unless --host says otherwise; then
    every request needs the token (given, or generated and printed once): open
    http://HOST:PORT/?token=TOKEN once in the browser, or send `Authorization: Bearer TOKEN`.
    JSON: /api/status (as `status --json`), /api/timeline, /api/history.
    """
    import uvicorn

    from orchestration.dashboard.app import create_app
    from orchestration.dashboard.feed import DashboardFeed

    check_backend(backend)
    needed, generated = access_token(host, token)
    settings = settings_for(config, log_level)
    runs = RunStore(open_result_store(settings))
    if run is not None:
        try:
            runs.read_manifest(run)
        except NotFoundError as exc:
            raise UsageError(str(exc)) from None
    launcher = open_launcher(resolve_backend(settings, backend), settings)
    reader = StatusReader(runs, open_queue(settings), launcher, run)
    feed = DashboardFeed(
        reader,
        price_per_node_hour=settings.price_per_node_hour,
        config=config,
        secrets=settings.secret_values(),
        interval_s=interval_s,
    )
    feed.refresh()  # the first picture before the first request
    sock = _listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{shown_host}:{bound_port}/"
    typer.echo(f"dashboard of queue {settings.queue} on {url} (Ctrl-C to stop)", err=True)
    if generated:
        typer.echo(f"token (shown once; open {url}?token=<token> once): {needed}", err=True)
    elif needed is not None:
        typer.echo(f"every request needs the token: open {url}?token=<token> once", err=True)
    stop = threading.Event()
    refresher = threading.Thread(target=feed.run, args=(stop,), name="dashboard-feed", daemon=True)
    refresher.start()
    # No access log: a first request's address may carry the token.
    server = uvicorn.Server(uvicorn.Config(create_app(feed, needed), log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C is how it stops: exit 0
        pass
    finally:
        stop.set()
        refresher.join(timeout=5)
        sock.close()
