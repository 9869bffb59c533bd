"""Progress of long sends: a rich bar on a terminal, a log line every few seconds otherwise.

Both go to stderr, so `--json` output on stdout stays machine-readable.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger(__name__)

Advance = Callable[[int], None]
LOG_EVERY_S = 10.0


@contextmanager
def progress(total: int, what: str, *, bar: bool | None = None) -> Iterator[Advance]:
    """Yield `advance(n)`; shows a bar when stderr is a terminal (or `bar=True`)."""
    if bar is None:
        bar = sys.stderr.isatty()
    if bar:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        ) as view:
            task = view.add_task(what, total=total)
            yield lambda n: view.advance(task, n)
        return

    done = 0
    last = time.monotonic()

    def advance(n: int) -> None:
        nonlocal done, last
        done += n
        if time.monotonic() - last >= LOG_EVERY_S and done < total:
            last = time.monotonic()
            log.info("%s: %d of %d", what, done, total)

    yield advance
