"""The run layout in the result store, and the records kept there.

```
runs/<run_id>/manifest.json              run settings + batch ids → image names (before sending)
runs/<run_id>/results/<batch_id>.jsonl   one row per image of the batch (written before the ack)
runs/<run_id>/batches/<batch_id>.json    the batch's timing record (written after the ack)
runs/<run_id>/poison/<batch_id>.json     reason, attempts, last error (when dead-lettered)
```

Results are keyed by `(run_id, batch_id)`: a retry overwrites the same object, never appends,
so a batch scored twice still yields one row per image. The timing record is separate because
`acked_at` is known only after the ack, and the results must be durable before it.

**A batch's state has one answer, `RunStore.run_state`:** *done* once its results are written
(with its timing record's detail when that exists: a consumer that dies between its ack and the
record leaves a done batch without timing), else *poisoned* when it has a poison report, else
*pending*. Every report, wait, export and requeue asks it.

Reading a run costs listings, not one read per batch: each results object carries its counts
(images, ok, failed, worker) and each timing record its fields as object metadata, which a
listing returns (`ObjectStore.list_info`). Objects written without metadata (by an older
version) are read once instead.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import from_json

from workpool.errors import NotFoundError, UsageError, WorkpoolError
from workpool.storage.base import ObjectExistsError, ObjectInfo, ObjectStore, check_metadata

RUNS = "runs"
# Reads that must happen per batch (result rows, records written without metadata) run this
# many at a time: enough to hide a request's latency, few enough for one connection pool.
READ_CONCURRENCY = 8

T = TypeVar("T")
K = TypeVar("K")


class Manifest(BaseModel):
    """Everything needed to re-send or audit a run; written before its first message."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: str
    task: str
    model: str | None = None
    labels: str | None = None
    batch_size: int
    queue: str
    images: int
    skipped: int = 0
    batches: dict[str, list[str]]

    def batch_of_image(self) -> dict[str, str]:
        return {image: batch_id for batch_id, images in self.batches.items() for image in images}


class ResultRow(BaseModel):
    """One image's outcome: `ok` with predictions, or `error` with its reason."""

    model_config = ConfigDict(extra="allow")

    image: str
    status: Literal["ok", "error"]
    error: str | None = None
    predictions: Any = None
    batch_id: str
    worker: str


_RESULT_ROWS = TypeAdapter(list[ResultRow])


class BatchRecord(BaseModel):
    """A batch's timing, for the drain report: first dequeue → last ack is the wall time."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    batch_id: str
    worker: str
    attempt: int
    images: int
    images_ok: int
    images_failed: int
    dequeued_at: datetime
    scored_at: datetime
    acked_at: datetime
    images_per_s: float
    # The GPUs' mean utilization (%) and peak memory in use since the worker's previous batch was
    # scored (consumer/gpu_stats.py); None, and left out of the record, where there is no GPU.
    gpu_busy_pct: float | None = None
    gpu_memory_mb: float | None = None
    gpu_window_s: float | None = None


class PoisonReport(BaseModel):
    """Why a batch was dead-lettered."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    batch_id: str
    reason: str
    attempts: int
    worker: str | None = None
    poisoned_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class RunExistsError(UsageError):
    """A manifest already exists for this run id: a run is enqueued once."""


BatchState = Literal["done", "poisoned", "pending"]


@dataclass(frozen=True)
class ResultCounts:
    """What a batch's results add up to; kept as the results object's metadata."""

    images: int
    images_ok: int
    images_failed: int
    worker: str | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> ResultCounts | None:
        values = _values_of(metadata) if metadata else None
        if values is None or not all(isinstance(values.get(k), int) for k in ("images", "images_ok", "images_failed")):
            return None
        worker = values.get("worker")
        return cls(values["images"], values["images_ok"], values["images_failed"], str(worker) if worker else None)

    @classmethod
    def of(cls, rows: list[ResultRow]) -> ResultCounts:
        failed = sum(1 for row in rows if row.status == "error")
        return cls(len(rows), len(rows) - failed, failed, rows[0].worker if rows else None)


@dataclass(frozen=True)
class BatchStatus:
    """One batch of a run, as `RunStore.run_state` found it."""

    batch_id: str
    state: BatchState
    counts: ResultCounts | None = None  # done: what its results add up to (with `timing`)
    record: BatchRecord | None = None  # done: its timing record, when one exists (with `timing`)
    poison: PoisonReport | None = None  # its poison report, when one exists


@dataclass(frozen=True)
class RunState:
    """Every batch of a run, in manifest order, with its state."""

    manifest: Manifest
    batches: dict[str, BatchStatus] = field(default_factory=dict)

    @classmethod
    def unknown(cls, manifest: Manifest) -> RunState:
        """Before anything was read: every batch pending."""
        return cls(manifest, {batch_id: BatchStatus(batch_id, "pending") for batch_id in manifest.batches})

    @property
    def run_id(self) -> str:
        return self.manifest.run_id

    def ids(self, state: BatchState) -> list[str]:
        return [b for b, status in self.batches.items() if status.state == state]

    @property
    def done(self) -> dict[str, BatchStatus]:
        return {b: s for b, s in self.batches.items() if s.state == "done"}

    @property
    def poisoned(self) -> dict[str, BatchStatus]:
        return {b: s for b, s in self.batches.items() if s.state == "poisoned"}

    @property
    def pending(self) -> list[str]:
        return self.ids("pending")

    @property
    def complete(self) -> bool:
        """Every batch done or poisoned."""
        return all(s.state != "pending" for s in self.batches.values())

    @property
    def records(self) -> dict[str, BatchRecord]:
        """Timing records of the done batches that have one."""
        return {b: s.record for b, s in self.batches.items() if s.state == "done" and s.record is not None}


def batch_state(has_results: bool, poisoned: bool) -> BatchState:
    """The rule: results written → done (whatever else happened), else a poison report → poisoned."""
    if has_results:
        return "done"
    return "poisoned" if poisoned else "pending"


def read_concurrently(read: Callable[[K], T], keys: Iterable[K], workers: int = READ_CONCURRENCY) -> Iterator[T]:
    """`read` of every key, in order, `workers` at a time; only a few results are held ahead."""
    todo = iter(keys)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read")
    try:
        ahead: deque[Future[T]] = deque(pool.submit(read, key) for key in islice(todo, workers * 4))
        while ahead:
            future = ahead.popleft()
            for key in islice(todo, 1):
                ahead.append(pool.submit(read, key))
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _metadata_of(values: Mapping[str, Any]) -> dict[str, str] | None:
    """Each value as JSON text (ASCII, so any store keeps it), or None when they cannot be metadata."""
    metadata = {key: json.dumps(value) for key, value in values.items() if value is not None}
    try:
        check_metadata(metadata)
    except ValueError:
        return None  # then readers read the object itself
    return metadata


M = TypeVar("M", bound=BaseModel)


def _model_of(model: type[M], metadata: Mapping[str, str]) -> M | None:
    """The record kept in `metadata`, or None when there is none (or not a whole one)."""
    values = _values_of(metadata) if metadata else None
    if values is None:
        return None
    try:
        return model.model_validate(values)
    except ValidationError:
        return None


def _values_of(metadata: Mapping[str, str]) -> dict[str, Any] | None:
    try:
        return {key.lower(): json.loads(value) for key, value in metadata.items()}
    except ValueError:
        return None


class RunStore:
    """Reads and writes runs in the layout above, on any object store."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @staticmethod
    def _key(run_id: str, *parts: str) -> str:
        return "/".join((RUNS, run_id, *parts))

    # --- manifest ------------------------------------------------------------------------
    def has_manifest(self, run_id: str) -> bool:
        return self.store.exists(self._key(run_id, "manifest.json"))

    def create_manifest(self, manifest: Manifest) -> None:
        """Write the manifest of a new run; `RunExistsError` when the run already has one.

        Create-if-absent in the store itself, so of two producers racing on one run id exactly
        one gets it. A retry of our own write that had arrived (its response lost) is no race:
        the manifest found is then ours, byte for byte.
        """
        data = manifest.model_dump_json().encode()
        key = self._key(manifest.run_id, "manifest.json")
        try:
            self.store.create(key, data)
        except ObjectExistsError:
            try:
                if self.store.read(key) == data:
                    return
            except NotFoundError:
                pass  # deleted again meanwhile: still not ours to take silently
            raise RunExistsError(f"run {manifest.run_id} already exists in {self.store.location}") from None

    def write_manifest(self, manifest: Manifest) -> None:
        """Write (or replace) a run's manifest; new runs use `create_manifest`."""
        self.store.write(self._key(manifest.run_id, "manifest.json"), manifest.model_dump_json().encode())

    def read_manifest(self, run_id: str) -> Manifest:
        try:
            data = self.store.read(self._key(run_id, "manifest.json"))
        except NotFoundError:
            raise NotFoundError(f"run {run_id!r} not found in {self.store.location} (no manifest)") from None
        return Manifest.model_validate_json(data)

    def delete_manifest(self, run_id: str) -> None:
        self.store.delete(self._key(run_id, "manifest.json"))

    def list_runs(self) -> list[str]:
        """Runs with a manifest: one listing of the run folders (not of everything in them), then
        each folder's manifest looked up, several at a time."""
        folders = list(self.store.list_folders(RUNS + "/"))
        found = read_concurrently(self.has_manifest, folders)
        return [run_id for run_id, has in zip(folders, found, strict=True) if has]

    # --- results -------------------------------------------------------------------------
    def write_results(self, run_id: str, batch_id: str, rows: list[ResultRow]) -> None:
        text = "".join(row.model_dump_json() + "\n" for row in rows)
        counts = ResultCounts.of(rows)
        self.store.write(
            self._key(run_id, "results", f"{batch_id}.jsonl"),
            text.encode("utf-8"),
            _metadata_of(counts.__dict__),
        )

    def read_results(self, run_id: str, batch_id: str) -> list[ResultRow]:
        data = self.store.read(self._key(run_id, "results", f"{batch_id}.jsonl"))
        try:
            # One JSON array for the whole batch: one call into pydantic's parser instead of one per row.
            lines = [line for line in data.splitlines() if line.strip()]
            return _RESULT_ROWS.validate_json(b"[" + b",".join(lines) + b"]")
        except ValueError as exc:
            raise WorkpoolError(f"results of run {run_id} batch {batch_id} are unreadable: {exc}") from None

    def read_result_dicts(self, run_id: str, batch_id: str) -> list[dict[str, Any]]:
        """The batch's result rows as plain dicts, each checked for the fields every row has.

        For reading many batches at once (`orchestration results`): a third of the cost of a
        `ResultRow` per row, which adds up over a run of hundreds of thousands of images.
        """
        data = self.store.read(self._key(run_id, "results", f"{batch_id}.jsonl"))
        try:
            rows = from_json(b"[" + b",".join(line for line in data.splitlines() if line.strip()) + b"]")
        except ValueError as exc:
            raise WorkpoolError(f"results of run {run_id} batch {batch_id} are unreadable: {exc}") from None
        for row in rows:
            if not (
                isinstance(row, dict)
                and row.get("status") in ("ok", "error")
                and all(isinstance(row.get(key), str) for key in ("image", "batch_id", "worker"))
            ):
                raise WorkpoolError(
                    f"results of run {run_id} batch {batch_id} are unreadable: a row without image, status, "
                    f"batch_id or worker"
                )
        return list(rows)

    def result_batch_ids(self, run_id: str) -> set[str]:
        return set(self._ids(run_id, "results", ".jsonl"))

    # --- batch timing records --------------------------------------------------------------
    def write_batch_record(self, record: BatchRecord) -> None:
        """The record as JSON, and its fields as metadata, so listings carry them."""
        self.store.write(
            self._key(record.run_id, "batches", f"{record.batch_id}.json"),
            record.model_dump_json().encode(),
            _metadata_of(record.model_dump(mode="json")),
        )

    def read_batch_records(self, run_id: str) -> list[BatchRecord]:
        """Every timing record of the run, from one listing (reading only those without metadata)."""
        listed = self._infos(run_id, "batches", ".json")
        return [r for r in self._records(run_id, listed, {}).values() if r is not None]

    def record_batch_ids(self, run_id: str) -> set[str]:
        """Batch ids that have a timing record (i.e. were acked)."""
        return set(self._ids(run_id, "batches", ".json"))

    def read_batch_record(self, run_id: str, batch_id: str) -> BatchRecord | None:
        """One batch's timing record, or None when it has none (yet)."""
        try:
            data = self.store.read(self._key(run_id, "batches", f"{batch_id}.json"))
        except NotFoundError:
            return None
        return BatchRecord.model_validate_json(data)

    # --- poison reports --------------------------------------------------------------------
    def write_poison(self, report: PoisonReport) -> None:
        """The report as JSON, and its fields as metadata (when they fit), so listings carry them."""
        self.store.write(
            self._key(report.run_id, "poison", f"{report.batch_id}.json"),
            report.model_dump_json().encode(),
            _metadata_of(report.model_dump(mode="json")),
        )

    def read_poison(self, run_id: str) -> list[PoisonReport]:
        """The run's poison reports, from one listing (reading only those without metadata)."""
        listed = self._infos(run_id, "poison", ".json")
        reports = {b: _model_of(PoisonReport, info.metadata) for b, info in listed.items()}
        unread = [b for b, report in reports.items() if report is None]
        reports.update(zip(unread, read_concurrently(self._read_poison, [(run_id, b) for b in unread]), strict=True))
        return [report for report in reports.values() if report is not None]

    def _read_poison(self, key: tuple[str, str]) -> PoisonReport | None:
        try:
            return PoisonReport.model_validate_json(self.store.read(self._key(key[0], "poison", f"{key[1]}.json")))
        except NotFoundError:
            return None  # requeued meanwhile

    def delete_poison(self, run_id: str, batch_id: str) -> None:
        self.store.delete(self._key(run_id, "poison", f"{batch_id}.json"))

    # --- the state of a run ---------------------------------------------------------------------
    def run_state(
        self,
        run_id: str,
        manifest: Manifest | None = None,
        *,
        timing: bool = True,
        previous: RunState | None = None,
    ) -> RunState:
        """Every batch of the run: done, poisoned or pending (see the module's docstring).

        Costs one listing of the results and of the poison reports, plus, with `timing`, one of
        the timing records, whose counts and timings come from the listings' metadata. Only what
        has no metadata is read (and, given the `previous` state, not again): counts of old
        results without a record, records written without metadata. Without `timing`, only the
        states (and poison reports) are filled in: enough for `requeue --missing`.
        """
        manifest = manifest or self.read_manifest(run_id)
        wanted = manifest.batches
        results = {b: info for b, info in self._infos(run_id, "results", ".jsonl").items() if b in wanted}
        poison = {r.batch_id: r for r in self.read_poison(run_id) if r.batch_id in wanted}
        records: dict[str, BatchRecord | None] = {}
        counts: dict[str, ResultCounts | None] = {}
        if timing:
            known = previous.batches if previous is not None else {}
            listed = {b: info for b, info in self._infos(run_id, "batches", ".json").items() if b in results}
            records = self._records(run_id, listed, known)
            counts = self._counts(run_id, results, records, known)
        return RunState(
            manifest,
            {
                batch_id: BatchStatus(
                    batch_id,
                    batch_state(batch_id in results, batch_id in poison),
                    counts=counts.get(batch_id),
                    record=records.get(batch_id),
                    poison=poison.get(batch_id),
                )
                for batch_id in wanted
            },
        )

    def _records(
        self, run_id: str, listed: dict[str, ObjectInfo], known: Mapping[str, BatchStatus]
    ) -> dict[str, BatchRecord | None]:
        records: dict[str, BatchRecord | None] = {}
        unread = []
        for batch_id, info in listed.items():
            record = _model_of(BatchRecord, info.metadata)
            if record is None:
                previous = known.get(batch_id)
                record = previous.record if previous is not None else None
            if record is None:
                unread.append(batch_id)
            records[batch_id] = record
        read = read_concurrently(lambda b: self.read_batch_record(run_id, b), unread)
        records.update(zip(unread, read, strict=True))
        return records

    def _counts(
        self,
        run_id: str,
        results: dict[str, ObjectInfo],
        records: Mapping[str, BatchRecord | None],
        known: Mapping[str, BatchStatus],
    ) -> dict[str, ResultCounts | None]:
        counts: dict[str, ResultCounts | None] = {}
        unread = []
        for batch_id, info in results.items():
            found = ResultCounts.from_metadata(info.metadata)
            previous = known.get(batch_id)
            record = records.get(batch_id)
            if found is None and previous is not None:
                found = previous.counts
            if found is None and record is not None:
                found = ResultCounts(record.images, record.images_ok, record.images_failed, record.worker)
            if found is None:
                unread.append(batch_id)
            counts[batch_id] = found
        counts.update(zip(unread, read_concurrently(lambda b: self._read_counts(run_id, b), unread), strict=True))
        return counts

    def _read_counts(self, run_id: str, batch_id: str) -> ResultCounts | None:
        try:
            return ResultCounts.of(self.read_results(run_id, batch_id))
        except NotFoundError:
            return None

    def _infos(self, run_id: str, folder: str, suffix: str) -> dict[str, ObjectInfo]:
        prefix = self._key(run_id, folder) + "/"
        infos = {}
        for info in self.store.list_info(prefix):
            leaf = info.name[len(prefix) :]
            if "/" not in leaf and leaf.endswith(suffix):
                infos[leaf[: -len(suffix)]] = info
        return infos

    def _ids(self, run_id: str, folder: str, suffix: str) -> Iterator[str]:
        prefix = self._key(run_id, folder) + "/"
        for name in self.store.list(prefix):
            leaf = name[len(prefix) :]
            if "/" not in leaf and leaf.endswith(suffix):
                yield leaf[: -len(suffix)]
