"""What the fault-injection scenarios share: real pools, real outages, and the checks of the promise.

The promise every scenario checks (`check_every_image_once`): each image of the run's manifest
ends as exactly one result row, in the result files the consumers wrote (not only in the export,
which yields one row per manifest image by construction), and the export agrees.

Figures (images, kills, outage seconds, rows, duplicates) are printed as one `FAULTS ...` line
per scenario, so `pytest -m faults -s | grep FAULTS` gives the table for the notes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from orchestration.local_state import state_dir
from tests.support.azurite import Azurite
from tests.support.cli import run_cli
from tests.support.faults_tasks import read_ledger
from tests.support.images import stage_folder
from tests.support.orchestration_cli import orchestration
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store


def run_store(settings: Settings) -> RunStore:
    return RunStore(open_result_store(settings))


def unique_images(folder: Path, n: int, *, prefix: str = "img_") -> list[str]:
    """`n` distinct 32×32 PNGs (random pixels, seeded by index): no two batches look alike, so the
    ledger's pixel fingerprints tell batches apart. Returns the names, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        name = f"{prefix}{i:05d}.png"
        Image.fromarray(pixels).save(folder / name, format="PNG", compress_level=1)
        names.append(name)
    return names


def staged_images(settings: Settings, folder: Path, n: int, *, prefix: str = "img_") -> tuple[str, list[str]]:
    """`n` distinct small images where the backend's consumers read them; (source URI, names)."""
    names = unique_images(folder, n, prefix=prefix)
    return stage_folder(settings, folder), names


def enqueue_run(settings: Settings, source: str, run_id: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """`producer enqueue SOURCE --run ID --json ARGS`; its JSON summary."""
    out = run_cli("producer", settings, "enqueue", source, "--run", run_id, "--json", *args, env=env)
    assert out.code == 0, out.stderr
    return out.json()


@dataclass(frozen=True)
class RowCheck:
    rows: int  # rows in the consumers' result files
    ok: int
    errors: int
    duplicate_rows: int  # images with more than one row in the result files (must be 0)
    export_rows: int

    def figures(self) -> dict[str, int]:
        return {"rows": self.rows, "ok": self.ok, "errors": self.errors, "duplicate_rows": self.duplicate_rows}


def check_every_image_once(settings: Settings, run_id: str, names: list[str], out: Path) -> RowCheck:
    """Every manifest image has exactly one row in the result files and in the export, in order."""
    runs = run_store(settings)
    manifest = runs.read_manifest(run_id)
    assert sorted(manifest.batch_of_image()) == sorted(names)
    seen: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    assert runs.result_batch_ids(run_id) == set(manifest.batches), "every batch has its result file"
    for batch_id, images in manifest.batches.items():
        rows = runs.read_results(run_id, batch_id)
        assert [r.image for r in rows] == images, f"batch {batch_id}: rows are its images, in order"
        for row in rows:
            seen[row.image] += 1
            statuses[row.status] += 1
            assert row.batch_id == batch_id
            assert row.status == "ok" or row.error, f"{row.image}: an error row carries its reason"
    exported = orchestration(settings, "results", "--run", run_id, "--out", str(out))
    assert exported.code == 0, exported.stderr
    export = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["image"] for r in export] == [image for images in manifest.batches.values() for image in images]
    assert Counter(r["status"] for r in export) == statuses
    return RowCheck(
        rows=sum(seen.values()),
        ok=statuses["ok"],
        errors=statuses["error"],
        duplicate_rows=sum(1 for c in seen.values() if c > 1),
        export_rows=len(export),
    )


@dataclass(frozen=True)
class ScoringCount:
    calls: int  # predict calls recorded, in every process
    images: int  # images scored, repeats included
    batches_scored_twice: int  # distinct batches scored more than once
    images_scored_twice: int  # extra images scored because of those repeats


def scoring_count(ledger: Path) -> ScoringCount:
    calls = read_ledger(ledger)
    per_batch = Counter(digest for _, _, digest in calls)
    size = {digest: images for _, images, digest in calls}
    return ScoringCount(
        calls=len(calls),
        images=sum(images for _, images, _ in calls),
        batches_scored_twice=sum(1 for c in per_batch.values() if c > 1),
        images_scored_twice=sum((c - 1) * size[d] for d, c in per_batch.items() if c > 1),
    )


def node_logs(settings: Settings) -> str:
    """Every local node's log and the supervisor's, as one text."""
    folder = state_dir(settings) / "logs"
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("*.log")))


def figures_line(scenario: str, **figures: Any) -> str:
    line = f"FAULTS {scenario}: " + " ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    return line


# --- outages -------------------------------------------------------------------------------------


class DatabaseLock:
    """Another connection holding a write transaction on the embedded queue's SQLite database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self.held_s = 0.0
        self._since = 0.0

    def acquire(self) -> None:
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("BEGIN IMMEDIATE")  # the write lock: every queue operation now waits
        self._since = time.monotonic()

    def release(self) -> None:
        if self._conn is not None:
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None
            self.held_s = time.monotonic() - self._since


@contextmanager
def stopped_for(server: Azurite, seconds: float) -> Iterator[threading.Event]:
    """Stop Azurite now; restart it (same ports, same data) `seconds` later, in the background."""
    back = threading.Event()
    server.stop()

    def restart() -> None:
        server.start()
        back.set()

    timer = threading.Timer(seconds, restart)
    timer.start()
    try:
        yield back
    finally:
        timer.join()


__all__ = [
    "DatabaseLock",
    "RowCheck",
    "ScoringCount",
    "check_every_image_once",
    "enqueue_run",
    "figures_line",
    "node_logs",
    "run_store",
    "scoring_count",
    "staged_images",
    "stopped_for",
    "unique_images",
]
