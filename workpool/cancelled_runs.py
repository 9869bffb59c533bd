"""Whether a run is cancelled, as a consumer asks it before scoring each batch (`orchestration cancel`).

The answer is the run's cancel record in the result store (`RunStore.is_cancelled`); this keeps
it cheap: at most one store request per run every `recheck_s` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from workpool.errors import StorageUnavailableError
from workpool.runs import RunStore

log = logging.getLogger(__name__)


class CancelledRuns:
    """Answers "is this run cancelled?" for a consumer, at most one store request per run every
    `recheck_s` seconds: a cancel is final, so a yes is kept; a no is asked again after a while."""

    def __init__(self, runs: RunStore, recheck_s: float = 2.0, clock: Callable[[], float] | None = None) -> None:
        self.runs = runs
        self.recheck_s = recheck_s
        self._clock = clock or time.monotonic
        self._cancelled: set[str] = set()
        self._checked: dict[str, float] = {}

    def __contains__(self, run_id: object) -> bool:
        if not isinstance(run_id, str):
            return False
        if run_id in self._cancelled:
            return True
        now = self._clock()
        last = self._checked.get(run_id)
        if last is not None and now - last < self.recheck_s:
            return False
        self._checked[run_id] = now
        try:
            cancelled = self.runs.is_cancelled(run_id)
        except StorageUnavailableError as exc:
            # Storage is away (an outage the consumer rides out): score as if not cancelled; the
            # results write waits for storage anyway, and the next look after it is back decides.
            log.debug("cancel record of run %s unreadable, taken as not cancelled: %s", run_id, exc)
            self._checked.pop(run_id, None)
            return False
        if cancelled:
            self._cancelled.add(run_id)
            return True
        return False
