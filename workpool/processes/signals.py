"""SIGTERM and SIGINT, caught from a consumer process's first line.

A node told to stop while it is still starting (scale-in right after scale-out, a preempted
node, Ctrl-C) is a normal event: it releases what it holds and exits 0, whatever it was doing.
So `python -m consumer` and the `consumer` script install these handlers before any heavy
import (the Azure SDKs, Pillow, TensorFlow: seconds on a busy machine), and a parent that
starts worker processes starts them with the signals held (`held`): the mask survives exec,
and the child lets them through once its own handlers are in place, so a signal sent between
spawn and that moment waits instead of killing the child.

The handler only notes the signal: it runs between any two bytecodes of the main thread, which
may be holding the very lock a logger or a `threading.Event` would take. The main thread's
waiting loops poll `received()` and do the stopping.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_received: list[int] = []


def _note(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)  # list.append takes no lock a signal could interrupt


def install() -> None:
    """Catch SIGTERM/SIGINT from now on (main thread only), and let through any that were held."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _note)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def received() -> signal.Signals | None:
    """The first stop signal received since `install`, or None."""
    return signal.Signals(_received[0]) if _received else None


@contextmanager
def held() -> Iterator[None]:
    """Hold SIGTERM/SIGINT on this thread meanwhile: a child started inside inherits them held.

    One sent to this process meanwhile is delivered when the block ends (or to another thread
    at once; the handler runs on the main thread either way).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def spawn_held(args: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start a child with SIGTERM/SIGINT held until its own handlers are in place (`install`):
    a stop sent the moment it starts (a scale-in right after a scale-out) is a clean stop, never
    a death by signal. Used by every process keeper (the local supervisor, the GPU fan-out)."""
    with held():
        return subprocess.Popen(args, **popen)
