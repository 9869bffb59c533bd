"""Which backend runs the pool of a queue, so `scale`, `status` and `teardown` need no `--backend`.

A successful `Launcher.launch` records it in `<home>/deployments/<queue>.json`;
`Launcher.teardown` forgets it (orchestration/launcher.py: the seam does it, not each caller).
"""

from __future__ import annotations

from pathlib import Path

from orchestration.local_state import read_json, write_json
from workpool.settings import Settings


def _path(settings: Settings) -> Path:
    return settings.home.absolute() / "deployments" / f"{settings.queue}.json"


def record_backend(settings: Settings, backend: str) -> None:
    write_json(_path(settings), {"backend": backend})


def active_backend(settings: Settings) -> str | None:
    data = read_json(_path(settings))
    return None if data is None else str(data["backend"])


def forget_backend(settings: Settings) -> None:
    _path(settings).unlink(missing_ok=True)


def resolve_backend(settings: Settings, backend: str | None) -> str:
    """The backend named on the command line, else the one that launched this queue's pool, else local."""
    return backend or active_backend(settings) or "local"
