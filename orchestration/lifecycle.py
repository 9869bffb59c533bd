"""A run's life after `producer enqueue`: list the runs, cancel one, delete one, inspect and purge poison.

Plain functions over the settings, each returning a dataclass with `to_dict()`: the CLI
(`orchestration runs|cancel|delete|poison`, orchestration/commands/runs.py) prints them, and the
Python API calls them. A run's state has one answer, `RunStore.run_state` (workpool/runs.py):
pending, running, done or cancelled.

- **cancel** writes the run's cancel record first, then takes its waiting batches off the work
  queue (`WorkQueue.remove_where`). Batches in flight are left to their consumers: one being
  scored finishes (its results are written whole); one that comes back (released, or its lease
  ran out) is dropped unscored by the consumer that receives it, since it sees the cancel record.
  Results so far are kept.
- **delete** cancels the run, then removes its poison-queue records and every object of the run
  (manifest last). It refuses while batches of the run are in flight (they would write results
  into a deleted run) unless forced. Deleting a run that is not there is no error.
- **poison** lists the poison reports (reason, attempts, time); **purge** removes them and their
  records on `<queue>-poison`, for one run or all. A purged batch has no result and no poison
  report: it counts as missing (`producer requeue --run R --missing` sends it again).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from orchestration.reports.progress import RunTracker
from workpool.errors import NotFoundError, UsageError
from workpool.queue import PoisonRecord, open_queue
from workpool.runs import CancelRecord, Manifest, RunPhase, RunStore, read_concurrently
from workpool.settings import Settings
from workpool.storage import open_result_store


@dataclass(frozen=True)
class RunSummary:
    """One line of `orchestration runs`."""

    run_id: str
    created_at: datetime
    queue: str
    task: str
    images: int
    batches: int
    batches_done: int
    batches_poisoned: int
    images_ok: int
    images_failed: int
    state: RunPhase

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


@dataclass(frozen=True)
class CancelResult:
    run_id: str
    cancelled_at: datetime
    already_cancelled: bool  # it was cancelled before: this call only swept the queue again
    messages_removed: int  # waiting batches taken off the queue
    in_flight: int | None  # its batches held by consumers (None: the queue cannot tell)
    batches_done: int  # batches with results, kept
    batches: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cancelled_at"] = self.cancelled_at.isoformat()
        return data


@dataclass(frozen=True)
class DeleteResult:
    run_id: str
    existed: bool  # False: nothing was there (deleting twice is no error)
    objects_deleted: int  # manifest, results, timing records, poison reports, cancel record
    messages_removed: int  # waiting batches taken off the work queue
    poison_records_removed: int  # its records on <queue>-poison

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PoisonEntry:
    """A poisoned batch, from its poison report."""

    run_id: str
    batch_id: str
    reason: str
    attempts: int
    worker: str | None
    poisoned_at: datetime
    images: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["poisoned_at"] = self.poisoned_at.isoformat()
        return data


@dataclass(frozen=True)
class PurgeResult:
    run_ids: list[str]  # the runs whose poison was purged (all runs of the queue with --all)
    reports_removed: int
    records_removed: int  # records taken off <queue>-poison

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BatchesInFlightError(UsageError):
    """`delete` of a run whose batches consumers still hold."""


def _runs(settings: Settings) -> RunStore:
    return RunStore(open_result_store(settings))


def _manifest(runs: RunStore, run_id: str) -> Manifest:
    try:
        return runs.read_manifest(run_id)
    except NotFoundError as exc:
        raise UsageError(f"{exc}; `orchestration runs` lists the runs") from None


def _store_runs(runs: RunStore) -> list[str]:
    try:
        return runs.list_runs()
    except NotFoundError:
        return []  # nothing enqueued yet: the result store does not exist


def run_of(body: str) -> str | None:
    """The run id a batch message names, or None when the body is not one (cheap: no validation)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    run_id = data.get("run_id") if isinstance(data, dict) else None
    return run_id if isinstance(run_id, str) else None


def poison_run_of(record: str) -> str | None:
    """The run id of the batch a poison record holds, or None when it cannot be read."""
    try:
        return run_of(PoisonRecord.decode(record).body)
    except (ValueError, KeyError, TypeError):
        return None


def _of_runs(read: Callable[[str], str | None], run_ids: set[str] | None) -> Callable[[str], bool]:
    """A `remove_where` match: bodies of these runs (every body when `run_ids` is None)."""
    if run_ids is None:
        return lambda body: True
    return lambda body: read(body) in run_ids


# --- list ------------------------------------------------------------------------------------
def list_runs(settings: Settings, *, all_queues: bool = False) -> list[RunSummary]:
    """The runs of the configured queue (of every queue with `all_queues`), oldest first."""
    runs = _runs(settings)
    summaries = []
    for run_id in _store_runs(runs):
        try:
            tracker = RunTracker(runs, run_id)
        except NotFoundError:
            continue  # deleted meanwhile
        if not all_queues and tracker.manifest.queue != settings.queue:
            continue
        progress = tracker.refresh()
        summaries.append(
            RunSummary(
                run_id=run_id,
                created_at=tracker.manifest.created_at,
                queue=tracker.manifest.queue,
                task=tracker.manifest.task,
                images=progress.images,
                batches=progress.batches,
                batches_done=progress.batches_done,
                batches_poisoned=progress.batches_poisoned,
                images_ok=progress.images_ok,
                images_failed=progress.images_failed,
                state=progress.state,
            )
        )
    return sorted(summaries, key=lambda s: (s.created_at, s.run_id))


# --- cancel ----------------------------------------------------------------------------------
def cancel_run(settings: Settings, run_id: str) -> CancelResult:
    """Cancel the run: record it, then take its waiting batches off the queue (module docstring)."""
    runs = _runs(settings)
    manifest = _manifest(runs, run_id)
    record = runs.read_cancel(run_id)
    already = record is not None
    if record is None:
        record = CancelRecord(run_id=run_id)
        runs.write_cancel(record)  # first: a consumer that takes a batch from now on drops it
    with open_queue(settings, manifest.queue) as queue:
        try:
            removal = queue.remove_where(_of_runs(run_of, {run_id}))
        except NotFoundError:  # the queue was never created: nothing waits on it
            removal = None
    state = runs.run_state(run_id, manifest, timing=False)
    return CancelResult(
        run_id=run_id,
        cancelled_at=record.cancelled_at,
        already_cancelled=already,
        messages_removed=removal.removed if removal else 0,
        in_flight=removal.in_flight if removal else 0,
        batches_done=len(state.done),
        batches=len(manifest.batches),
    )


# --- delete ----------------------------------------------------------------------------------
def delete_run(settings: Settings, run_id: str, *, force: bool = False) -> DeleteResult:
    """Cancel the run, then delete its poison records and every object of it (module docstring).

    `BatchesInFlightError` (nothing deleted, the run left cancelled) while consumers hold batches
    of it, unless `force`: a forced delete lets those batches write their results into the
    deleted run's folder (deleting again afterwards removes them).
    """
    runs = _runs(settings)
    try:
        manifest = runs.read_manifest(run_id)
    except NotFoundError:
        leftovers = runs.delete_run(run_id) if run_id in _store_folders(runs) else 0
        return DeleteResult(run_id, existed=False, objects_deleted=leftovers, messages_removed=0,
                            poison_records_removed=0)  # fmt: skip
    cancelled = cancel_run(settings, run_id)
    if not force:
        _refuse_in_flight(settings, runs, manifest, cancelled)
    with open_queue(settings, manifest.queue) as queue, queue.poison() as poison:
        try:
            records = poison.remove_where(_of_runs(poison_run_of, {run_id})).removed
        except NotFoundError:
            records = 0
    deleted = runs.delete_run(run_id)
    return DeleteResult(run_id, True, deleted, cancelled.messages_removed, records)


def _store_folders(runs: RunStore) -> set[str]:
    try:
        return set(runs.store.list_folders("runs/"))
    except NotFoundError:
        return set()


def _refuse_in_flight(settings: Settings, runs: RunStore, manifest: Manifest, cancelled: CancelResult) -> None:
    run_id = manifest.run_id
    how = (
        f"run {run_id} is cancelled now and nothing was deleted; its consumers finish or drop those batches "
        f"within a visibility timeout ({settings.visibility_timeout_s} s at most): delete it again then, "
        "or now with --force (batches still finishing may then write results again)"
    )
    if cancelled.in_flight:
        raise BatchesInFlightError(f"{cancelled.in_flight} batch(es) of run {run_id} are in flight; {how}")
    if cancelled.in_flight is None:  # the queue cannot see in-flight messages: ask its depth
        state = runs.run_state(run_id, manifest, timing=False)
        with open_queue(settings, manifest.queue) as queue:
            depth = queue.depth()
        if state.pending and (depth.in_flight is None or depth.in_flight > 0):
            raise BatchesInFlightError(
                f"run {run_id} has {len(state.pending)} unfinished batch(es) and queue {manifest.queue} has "
                f"messages in flight, which may be some of them; {how}"
            )


# --- poison ----------------------------------------------------------------------------------
def list_poison(settings: Settings, run_id: str | None = None) -> list[PoisonEntry]:
    """Poisoned batches of one run, or of every run of the queue, oldest first."""
    runs = _runs(settings)
    manifests = _queue_manifests(settings, runs, run_id)
    entries = []
    for manifest, reports in zip(manifests, read_concurrently(lambda m: runs.read_poison(m.run_id), manifests),
                                 strict=True):  # fmt: skip
        for report in reports:
            entries.append(
                PoisonEntry(
                    run_id=report.run_id,
                    batch_id=report.batch_id,
                    reason=report.reason,
                    attempts=report.attempts,
                    worker=report.worker,
                    poisoned_at=report.poisoned_at,
                    images=len(manifest.batches.get(report.batch_id, [])),
                )
            )
    return sorted(entries, key=lambda e: (e.poisoned_at, e.run_id, e.batch_id))


def purge_poison(settings: Settings, run_id: str | None = None) -> PurgeResult:
    """Remove the poison reports and `<queue>-poison` records of one run, or of every run (None)."""
    runs = _runs(settings)
    manifests = _queue_manifests(settings, runs, run_id)
    reports = 0
    for manifest in manifests:
        for report in runs.read_poison(manifest.run_id):
            runs.delete_poison(report.run_id, report.batch_id)
            reports += 1
    name = manifests[0].queue if run_id is not None else settings.queue
    with open_queue(settings, name) as queue, queue.poison() as poison:
        try:
            match = _of_runs(poison_run_of, None if run_id is None else {run_id})
            records = poison.remove_where(match).removed
        except NotFoundError:
            records = 0
    return PurgeResult([m.run_id for m in manifests], reports, records)


def _queue_manifests(settings: Settings, runs: RunStore, run_id: str | None) -> list[Manifest]:
    if run_id is not None:
        return [_manifest(runs, run_id)]
    manifests = []
    for found in _store_runs(runs):
        try:
            manifest = runs.read_manifest(found)
        except NotFoundError:
            continue
        if manifest.queue == settings.queue:
            manifests.append(manifest)
    return manifests
