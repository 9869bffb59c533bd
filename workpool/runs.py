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
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from workpool.errors import NotFoundError, WorkpoolError
from workpool.storage.base import ObjectStore

RUNS = "runs"


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


class PoisonReport(BaseModel):
    """Why a batch was dead-lettered."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    batch_id: str
    reason: str
    attempts: int
    worker: str | None = None
    poisoned_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


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

    def write_manifest(self, manifest: Manifest) -> None:
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
        runs = set()
        for name in self.store.list(RUNS + "/"):
            parts = name.split("/")
            if len(parts) == 3 and parts[2] == "manifest.json":
                runs.add(parts[1])
        return sorted(runs)

    # --- results -------------------------------------------------------------------------
    def write_results(self, run_id: str, batch_id: str, rows: list[ResultRow]) -> None:
        text = "".join(row.model_dump_json() + "\n" for row in rows)
        self.store.write(self._key(run_id, "results", f"{batch_id}.jsonl"), text.encode("utf-8"))

    def read_results(self, run_id: str, batch_id: str) -> list[ResultRow]:
        data = self.store.read(self._key(run_id, "results", f"{batch_id}.jsonl"))
        try:
            return [ResultRow.model_validate_json(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        except ValueError as exc:
            raise WorkpoolError(f"results of run {run_id} batch {batch_id} are unreadable: {exc}") from None

    def result_batch_ids(self, run_id: str) -> set[str]:
        return set(self._ids(run_id, "results", ".jsonl"))

    # --- batch timing records --------------------------------------------------------------
    def write_batch_record(self, record: BatchRecord) -> None:
        self.store.write(
            self._key(record.run_id, "batches", f"{record.batch_id}.json"), record.model_dump_json().encode()
        )

    def read_batch_records(self, run_id: str) -> list[BatchRecord]:
        records = (self.read_batch_record(run_id, batch_id) for batch_id in self._ids(run_id, "batches", ".json"))
        return [record for record in records if record is not None]

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
        self.store.write(
            self._key(report.run_id, "poison", f"{report.batch_id}.json"), report.model_dump_json().encode()
        )

    def read_poison(self, run_id: str) -> list[PoisonReport]:
        return [
            PoisonReport.model_validate_json(self.store.read(self._key(run_id, "poison", f"{batch_id}.json")))
            for batch_id in self._ids(run_id, "poison", ".json")
        ]

    def delete_poison(self, run_id: str, batch_id: str) -> None:
        self.store.delete(self._key(run_id, "poison", f"{batch_id}.json"))

    def _ids(self, run_id: str, folder: str, suffix: str) -> Iterator[str]:
        prefix = self._key(run_id, folder) + "/"
        for name in self.store.list(prefix):
            leaf = name[len(prefix) :]
            if "/" not in leaf and leaf.endswith(suffix):
                yield leaf[: -len(suffix)]
