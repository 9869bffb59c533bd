"""`orchestration results`: one row per manifest image, in manifest order, as CSV, JSONL or Parquet.

Every image of the manifest yields exactly one row, whatever happened to its batch:
- scored: the batch's result rows (a batch scored twice was overwritten, never appended);
- poisoned: an error row with the poison reason;
- not finished yet: an error row saying so (the export of a running run is still complete).
"""

from __future__ import annotations

import csv
import functools
import json
import multiprocessing
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workpool.errors import NotFoundError, UsageError
from workpool.runs import RunStore, read_concurrently
from workpool.storage.base import ObjectStore

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = (".csv", ".jsonl", ".parquet")
COLUMNS = ["image", "status", "error", "top_label", "top_score", "predictions", "batch_id", "worker"]


@dataclass
class ExportSummary:
    path: Path
    rows: int
    ok: int
    failed: int
    pending: int  # images whose batch had neither results nor a poison report

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.path), "rows": self.rows, "ok": self.ok, "failed": self.failed, "pending": self.pending}


def top_prediction(predictions: Any) -> tuple[str | None, float | None]:
    """The flat top label and score: the best of a top-k list; one label per head for a multi-head task."""
    if isinstance(predictions, list):
        best, best_score = None, 0.0
        for p in predictions:  # the first of the highest scores, as max() would pick
            if isinstance(p, dict) and "score" in p:
                score = float(p["score"])
                if best is None or score > best_score:
                    best, best_score = p, score
        if best is not None:
            return str(best.get("label", best.get("index"))), best_score
    if isinstance(predictions, dict):
        # cloth_recognition: {head: [{label, score}, ...]} → "head=label; head=label", no single score.
        tops = {head: top_prediction(values)[0] for head, values in predictions.items()}
        if any(label is not None for label in tops.values()):
            return "; ".join(f"{head}={label}" for head, label in tops.items() if label is not None), None
    return None, None


# One encoder for every row: json.dumps(..., ensure_ascii=False) builds a new one per call.
_JSON_TEXT = json.JSONEncoder(ensure_ascii=False)


def export_rows(
    runs: RunStore, run_id: str, pending: list[int] | None = None, *, flat: bool = False
) -> Iterator[dict[str, Any]]:
    """Rows in manifest order; `pending`, if given, gets one count per unfinished image appended.

    Which batches are done comes from the run's state (listings); the done batches' result rows
    are then read, and turned into output rows, several batches at a time, in manifest order.
    With `flat`, predictions come as JSON text (for CSV and Parquet).
    """
    state = runs.run_state(run_id, timing=False)
    scored = scored_batches(runs, run_id, list(state.done), flat)
    for batch_id, images in state.manifest.batches.items():
        status = state.batches[batch_id]
        by_image = {row[0]: row for row in next(scored)} if status.state == "done" else {}
        report = status.poison
        for image in images:
            row = by_image.get(image)
            if row is not None:
                yield dict(zip(COLUMNS, row, strict=True))
            elif report is not None:
                yield _error(
                    image, batch_id, f"poisoned after {report.attempts} attempts: {report.reason}", report.worker
                )
            elif by_image:
                yield _error(image, batch_id, "missing from its batch's results", None)
            else:
                if pending is not None:
                    pending.append(1)
                yield _error(image, batch_id, "not scored yet: its batch has no result", None)


# Reading a large run's rows is CPU work (a storage request and JSON per batch, a row per image)
# that one process does at one core's pace. From this many done batches on, forked worker
# processes share it, each with a store of its own (`ObjectStore.reopened`: no inherited
# connection is ever used) reading its chunks several batches at a time; below it, or where
# processes cannot be forked or the store cannot be opened again, threads in this process.
PROCESS_MIN_BATCHES = 512
READ_PROCESSES = 4
CHUNK_BATCHES = 32

Row = tuple[Any, ...]  # an output row's values, in COLUMNS order


def scored_batches(runs: RunStore, run_id: str, done: list[str], flat: bool) -> Iterator[list[Row]]:
    """Each done batch's output rows, in the order of `done` (an empty list when its results vanished)."""
    processes = min(READ_PROCESSES, os.cpu_count() or 1)
    if len(done) >= PROCESS_MIN_BATCHES and processes > 1 and "fork" in multiprocessing.get_all_start_methods():
        try:
            store = runs.store.reopened()
        except NotImplementedError:
            pass
        else:
            return _scored_in_processes(store, run_id, done, flat, processes)
    return read_concurrently(functools.partial(_rows_of, runs, run_id, flat), done)


def _rows_of(runs: RunStore, run_id: str, flat: bool, batch_id: str) -> list[Row]:
    try:
        return [_row(row, flat) for row in runs.read_result_dicts(run_id, batch_id)]
    except NotFoundError:
        return []  # deleted since the listing: reported like a batch without results


def _scored_in_processes(
    store: ObjectStore, run_id: str, done: list[str], flat: bool, processes: int
) -> Iterator[list[Row]]:
    chunks = [done[i : i + CHUNK_BATCHES] for i in range(0, len(done), CHUNK_BATCHES)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_open_worker, initargs=(store,)) as pool:
        todo = iter(chunks)
        ahead = deque(pool.submit(_read_chunk, run_id, chunk, flat) for chunk in islice(todo, processes * 2))
        try:
            while ahead:
                future = ahead.popleft()
                for chunk in islice(todo, 1):
                    ahead.append(pool.submit(_read_chunk, run_id, chunk, flat))
                yield from future.result()
        finally:
            for future in ahead:
                future.cancel()


_worker_runs: RunStore | None = None


def _open_worker(store: ObjectStore) -> None:
    """In a worker process: its own store, opened anew (never the parent's connections)."""
    global _worker_runs
    _worker_runs = RunStore(store.reopened())


def _read_chunk(run_id: str, batch_ids: list[str], flat: bool) -> list[list[Row]]:
    """In a worker process: a chunk of batches' rows, several batches at a time."""
    assert _worker_runs is not None
    return list(read_concurrently(functools.partial(_rows_of, _worker_runs, run_id, flat), batch_ids))


def _row(row: dict[str, Any], flat: bool) -> Row:
    """The output row of a result row (a dict from `RunStore.read_result_dicts`), in COLUMNS order."""
    predictions = row.get("predictions")
    label, score = top_prediction(predictions) if row["status"] == "ok" else (None, None)
    if flat and predictions is not None:
        predictions = _JSON_TEXT.encode(predictions)  # nested predictions as JSON text
    return (row["image"], row["status"], row.get("error"), label, score, predictions, row["batch_id"], row["worker"])


def _error(image: str, batch_id: str, reason: str, worker: str | None) -> dict[str, Any]:
    return {
        "image": image,
        "status": "error",
        "error": reason,
        "top_label": None,
        "top_score": None,
        "predictions": None,
        "batch_id": batch_id,
        "worker": worker,
    }


def export_results(runs: RunStore, run_id: str, out: Path) -> ExportSummary:
    """Write the run's rows to `out` (format from its suffix), atomically: a reader never sees half a file."""
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"--out {out}: expected a file ending in {', '.join(FORMATS)}")
    runs.read_manifest(run_id)  # a missing run fails before any file is created
    out.parent.mkdir(parents=True, exist_ok=True)
    pending: list[int] = []
    counts = {"ok": 0, "error": 0}

    def counted() -> Iterator[dict[str, Any]]:
        for row in export_rows(runs, run_id, pending, flat=suffix != ".jsonl"):
            counts[row["status"]] += 1
            yield row

    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".csv":
            _write_csv(counted(), tmp)
        elif suffix == ".jsonl":
            _write_jsonl(counted(), tmp)
        else:
            _write_parquet(counted(), tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportSummary(out, counts["ok"] + counts["error"], counts["ok"], counts["error"], len(pending))


def _write_csv(rows: Iterator[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def _write_jsonl(rows: Iterator[dict[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def arrow_schema() -> pa.Schema:
    """The columns as Arrow types: Parquet's, and `Run.results()`'s table."""
    import pyarrow as pa

    return pa.schema(
        [
            ("image", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("top_label", pa.string()),
            ("top_score", pa.float64()),
            ("predictions", pa.string()),  # JSON text: tasks differ in shape, Parquet wants one
            ("batch_id", pa.string()),
            ("worker", pa.string()),
        ]
    )


def arrow_table(rows: Iterator[dict[str, Any]]) -> pa.Table:
    """Rows (flat: predictions as JSON text) as one Arrow table with `arrow_schema()`."""
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for row in rows:
        for name, values in columns.items():
            values.append(row[name])
    return pa.Table.from_pydict(columns, schema=arrow_schema())


def _write_parquet(rows: Iterator[dict[str, Any]], path: Path, chunk: int = 50_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema()
    with pq.ParquetWriter(str(path), schema) as writer:
        columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}

        def flush() -> None:
            writer.write_table(pa.Table.from_pydict(columns, schema=schema))
            for values in columns.values():
                values.clear()

        for count, row in enumerate(rows, 1):
            for name, values in columns.items():
                values.append(row[name])
            if count % chunk == 0:
                flush()
        # Always write the last (possibly only, possibly empty) chunk so the file has its schema.
        flush()
