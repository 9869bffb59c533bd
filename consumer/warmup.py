"""Load and warm the models a consumer is about to need, before it takes its first batch.

A cold model costs its first batch the loading (seconds, more for a blob download), the tracing
and, with XLA or JAX, the compilation of its call. Paid inside the first leased batch, that time
counts in the run's drain and delays the batch; with many nodes it is a first-order share of a
short run. So before the prefetcher receives anything, the consumer warms:

1. the model named by the `model` setting (`WORKPOOL_MODEL`, or `model` in the config file), at
   the `batch_size` setting, with its family's preprocessing;
2. the (task, model, labels) of every run pending on its queue (a manifest naming this queue
   whose batches are not all done or poisoned, `RunStore.run_state`), oldest first, at the
   run's batch size: the task is loaded exactly as its messages will ask for it (`TaskCache`),
   so the first batch finds it ready.

At most `TaskCache.max_tasks` are warmed (more would be evicted again). Warming is best effort:
a model that cannot be loaded is logged and left to the batches, which fail, retry and poison it
with their usual reasons. The stop event is checked between steps, so a signal during warm-up
stops the consumer after the step in progress (one model load or one call), never later.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from consumer.access import ReadPolicy
from consumer.preprocessing import mode_for_model_name
from consumer.tasks import TaskCache
from workpool.errors import MessageError, NotFoundError
from workpool.runs import Manifest, RunStore
from workpool.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What to warm: a run's task (or a bare model, task None) at a batch size."""

    task: str | None
    model: str
    labels: str | None
    batch_size: int
    reason: str  # for the log: "setting model" or "run <id>"


def pending_manifests(settings: Settings, runs: RunStore) -> list[Manifest]:
    """Manifests of the runs on this consumer's queue with batches left to score, oldest first."""
    try:
        run_ids = runs.list_runs()
    except NotFoundError:
        return []  # nothing was ever enqueued: no result store yet
    pending = []
    for run_id in run_ids:
        try:
            manifest = runs.read_manifest(run_id)
        except NotFoundError:
            continue  # deleted since the listing
        # The run state's own answer (results listed, poison reports read; no timing records).
        if manifest.queue == settings.queue and not runs.run_state(run_id, manifest, timing=False).complete:
            pending.append(manifest)
    return sorted(pending, key=lambda m: m.created_at)


def targets(settings: Settings, runs: RunStore, limit: int) -> list[Target]:
    """What to warm, in order, without duplicates, at most `limit`."""
    found: list[Target] = []
    if settings.model:
        found.append(Target(None, settings.model, None, settings.batch_size, "setting model"))
    policy = ReadPolicy(settings)
    for manifest in pending_manifests(settings, runs):
        if manifest.model:
            try:  # what its batches may not read is not loaded ahead of them either (docs/security.md)
                policy.check_run(manifest.source, manifest.model, manifest.labels)
            except MessageError as exc:
                log.warning("warm-up: run %s not warmed: %s", manifest.run_id, exc)
                continue
            found.append(Target(manifest.task, manifest.model, manifest.labels, manifest.batch_size,
                                 f"run {manifest.run_id}"))  # fmt: skip
    unique: dict[tuple[str | None, str, str | None], Target] = {}
    for target in found:
        unique.setdefault((target.task, target.model, target.labels), target)
    return list(unique.values())[:limit]


def warm_up(settings: Settings, tasks: TaskCache, runs: RunStore, stop: threading.Event) -> int:
    """Load and warm every target (see the module docstring); returns how many were warmed."""
    started = time.perf_counter()
    try:
        todo = targets(settings, runs, tasks.max_tasks)
    except Exception as exc:  # storage unreachable, an unreadable manifest: not worth failing over
        log.warning("warm-up: could not list the queue's pending runs (%s); models load with their first batch", exc)
        todo = [Target(None, settings.model, None, settings.batch_size, "setting model")] if settings.model else []
    warmed = 0
    for target in todo:
        if stop.is_set():
            return warmed
        try:
            seconds = _warm(target, tasks, stop)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # (SystemExit from a task's code too) the batches will meet it and report it
            log.warning("warm-up: %s (%s) not warmed: %s", target.model, target.reason, exc)
            continue
        if seconds is not None:
            warmed += 1
            log.info("warm-up: %s (%s) ready for batches of %d in %.1f s", target.model, target.reason,
                     target.batch_size, seconds)  # fmt: skip
    if todo:
        log.info("warm-up: %d of %d model(s) warmed in %.1f s", warmed, len(todo), time.perf_counter() - started)
    return warmed


def _warm(target: Target, tasks: TaskCache, stop: threading.Event) -> float | None:
    """Load, then (unless stopped in between) run the call once; seconds, or None when stopped."""
    started = time.perf_counter()
    if target.task is None:
        model = tasks.context.models.get(target.model)
        if stop.is_set():
            return None
        model.warm(target.batch_size, mode_for_model_name(model.name))
    else:
        task = tasks.get(target.task, target.model, target.labels)
        if stop.is_set():
            return None
        task.warm(target.batch_size)
    return time.perf_counter() - started
