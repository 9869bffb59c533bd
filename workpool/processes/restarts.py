"""Restarting a process that died, without letting a crash loop eat the machine.

One policy, and one log line, for both places that keep processes running: the local pool's
supervisor (orchestration/supervisor.py, a process per node) and the per-GPU fan-out
(consumer/gpu_fanout.py, a worker process per GPU). Both start their children with
`signals.spawn_held` and read their own stop from `signals.received`.
"""

from __future__ import annotations

import logging
import random
import signal

from workpool.retry import Backoff

# A process that exits on its own within this many seconds of starting counts as failing at
# start-up (a bad setting, a broken install): from its second such exit in a row it is restarted
# after a pause whose ceiling doubles up to MAX_BACKOFF_S (full jitter, workpool/retry.py: the
# nodes of a pool that all crash on the same outage do not all come back in the same second),
# so a crash loop costs little CPU and leaves readable logs.
QUICK_FAILURE_S = 10.0
MAX_BACKOFF_S = 30.0


def describe_exit(code: int) -> str:
    """A Popen return code in words: 'exit 1', 'killed by SIGKILL'."""
    if code >= 0:
        return f"exit {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


class CrashLoopBackoff:
    """How long to wait before restarting each process (by key), given how it ended."""

    def __init__(
        self,
        quick_failure_s: float = QUICK_FAILURE_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.quick_failure_s = quick_failure_s
        self.backoff = Backoff(base_s=1.0, cap_s=max_backoff_s, rng=rng or random.Random())
        self._quick_failures: dict[str, int] = {}

    def delay_s(self, key: str, code: int, ran_s: float) -> float:
        """The pause before restarting `key`, which ended with `code` after running `ran_s`.

        Only a process that exits on its own soon after starting is in a crash loop; one killed
        by a signal (an operator, the OOM killer, a test) is replaced at once, and so is the
        first quick exit (one bad start is not a loop). From the second in a row the pause is
        drawn under a ceiling of 2, 4, 8 ... up to `max_backoff_s` seconds.
        """
        exited_young = code >= 0 and ran_s < self.quick_failure_s
        quick = self._quick_failures.get(key, 0) + 1 if exited_young else 0
        self._quick_failures[key] = quick
        return 0.0 if quick <= 1 else self.backoff.delay_s(quick - 1)

    def after_death(self, key: str, code: int, ran_s: float, log: logging.Logger, what: str | None = None) -> float:
        """`delay_s`, with the one log line every keeper writes for a process that died."""
        delay = self.delay_s(key, code, ran_s)
        log.warning("%s died (%s) after %.1f s; respawning in %.1f s", what or key, describe_exit(code), ran_s, delay)
        return delay

    def forget(self, key: str) -> None:
        """A later process under this key starts afresh."""
        self._quick_failures.pop(key, None)
