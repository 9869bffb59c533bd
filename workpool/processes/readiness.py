"""A node's "past my start-up checks" mark, so a local launcher knows a node is up, not just alive.

The supervisor names a file per node in the node's environment and removes it before each start;
the consumer touches it once its settings are valid and its worker is built (before the model
loads). A launch then waits for every node's mark instead of guessing from how long it has lived:
on a loaded machine a node that is about to fail its start-up checks may still be importing after
any fixed time.
"""

from __future__ import annotations

import os
from pathlib import Path

READY_FILE_ENV = "CONSUMER_READY_FILE"


def mark_ready() -> None:
    """Touch this process's ready file, if its parent asked for one."""
    path = os.environ.get(READY_FILE_ENV)
    if path:
        Path(path).touch()
