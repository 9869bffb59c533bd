"""Object stores (local directory, in-memory, blob container) and the run layout, on every backend.

The same tests run on a local directory, in memory and on an Azurite blob container: the image-source
side (list under a prefix, sorted; read bytes; clear errors when missing) and the result-store
side (idempotent writes, manifest, results, timing and poison records).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import CONTRACT_BACKENDS
from workpool.errors import NotFoundError, UsageError
from workpool.runs import BatchRecord, Manifest, PoisonReport, ResultRow, RunExistsError, RunStore
from workpool.settings import Settings
from workpool.storage import ObjectStore, open_location, open_result_store, parse_location
from workpool.storage.base import ObjectExistsError


@pytest.fixture(params=CONTRACT_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    s = open_result_store(settings)
    s.ensure()
    return s


def test_a_missing_directory_or_container_is_named(settings: Settings, backend: str, tmp_path: Path) -> None:
    if backend == "memory":
        source, prefix = open_result_store(settings.model_copy(update={"results": "no-such-store"})), "x"
    else:
        uri = "az://no-such-container/x" if settings.uses_azure_storage else str(tmp_path / "no-such-dir")
        source, prefix = open_location(settings, uri)
    with pytest.raises(NotFoundError, match="no-such-"):
        source.check()
    with pytest.raises(NotFoundError, match="no-such-"):
        list(source.list(prefix))


def test_listing_is_sorted_and_limited_to_the_prefix(store: ObjectStore) -> None:
    for name in ["imgs/b.jpg", "imgs/a.jpg", "imgs/sub/c.png", "imgsx/d.jpg", "other/e.jpg", "imgs/ü.jpg"]:
        store.write(name, b"x")
    assert list(store.list("imgs/")) == ["imgs/a.jpg", "imgs/b.jpg", "imgs/sub/c.png", "imgs/ü.jpg"]


def test_read_returns_the_bytes_and_a_missing_name_is_not_found(store: ObjectStore) -> None:
    payload = bytes(range(256)) * 10
    store.write("blob.bin", payload)
    assert store.read("blob.bin") == payload
    assert store.exists("blob.bin") and not store.exists("absent.bin")
    with pytest.raises(NotFoundError, match=r"absent\.bin"):
        store.read("absent.bin")


def test_a_write_replaces_the_previous_version_and_delete_is_idempotent(store: ObjectStore) -> None:
    store.write("k.json", b"first version, longer")
    store.write("k.json", b"second")
    assert store.read("k.json") == b"second"
    store.delete("k.json")
    store.delete("k.json")
    assert not store.exists("k.json")


def test_results_are_idempotent_per_run_and_batch(store: ObjectStore) -> None:
    runs = RunStore(store)
    first = [
        ResultRow(
            image=f"i{n}.jpg", status="ok", predictions=[{"label": "cat", "score": 0.5}], batch_id="b1", worker="w1"
        )
        for n in range(3)
    ]
    retry = [row.model_copy(update={"worker": "w2"}) for row in first]
    runs.write_results("run1", "b1", first)
    runs.write_results("run1", "b1", retry)  # a redelivered batch scored again
    assert runs.read_results("run1", "b1") == retry
    assert runs.result_batch_ids("run1") == {"b1"}


def test_manifest_timing_and_poison_records_round_trip(store: ObjectStore) -> None:
    runs = RunStore(store)
    manifest = Manifest(
        run_id="run2",
        source="/data",
        task="classification",
        batch_size=2,
        queue="q",
        images=3,
        batches={"b0": ["a", "b"], "b1": ["c"]},
    )
    assert not runs.has_manifest("run2")
    runs.write_manifest(manifest)
    assert runs.read_manifest("run2") == manifest
    assert runs.list_runs() == ["run2"]
    now = datetime.now(UTC)
    record = BatchRecord(
        run_id="run2",
        batch_id="b0",
        worker="w",
        attempt=1,
        images=2,
        images_ok=2,
        images_failed=0,
        dequeued_at=now,
        scored_at=now,
        acked_at=now,
        images_per_s=10.0,
    )
    runs.write_batch_record(record)
    assert runs.read_batch_records("run2") == [record]
    report = PoisonReport(run_id="run2", batch_id="b1", reason="model missing", attempts=5)
    runs.write_poison(report)
    assert runs.read_poison("run2") == [report]
    runs.delete_poison("run2", "b1")
    assert runs.read_poison("run2") == []


def test_an_unknown_run_is_reported_by_name(store: ObjectStore) -> None:
    with pytest.raises(NotFoundError, match="run 'ghost' not found"):
        RunStore(store).read_manifest("ghost")


def test_local_names_cannot_escape_the_directory(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "secret.txt").write_text("s")
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    store, _ = open_location(Settings(home=tmp_path), str(tmp_path / "root"))
    for name in ["../secret.txt", "/etc/passwd", "link/secret.txt"]:
        with pytest.raises(NotFoundError):
            store.read(name)


def test_source_uris_parse_into_container_and_prefix() -> None:
    assert parse_location("az://images/2018/batch").container == "images"
    assert parse_location("az://images/2018/batch").path == "2018/batch"
    assert parse_location("az://images").uri() == "az://images"
    assert parse_location("relative/dir").container is None
    for bad in ("az://", "s3://bucket/x"):
        with pytest.raises(UsageError):
            parse_location(bad)


def test_blob_uris_need_azure_storage_settings(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="AZURE_STORAGE_CONNECTION_STRING"):
        open_location(Settings(home=tmp_path), "az://images/x")


# --- metadata carried by listings, and create-if-absent ---------------------------------------


def test_a_listing_carries_each_objects_metadata_and_only_its_own(store: ObjectStore) -> None:
    store.write("m/a.json", b"a", {"images": "64", "worker": '"vm-1"'})
    store.write("m/b.json", b"b")
    store.write("m/c.json", b"c1", {"images": "1"})
    store.write("m/c.json", b"c2", {"images": "2"})  # replaced: the new metadata with the new bytes
    store.write("m/a.json", b"a2")  # replaced without metadata: none is listed any more

    listed = {info.name: dict(info.metadata) for info in store.list_info("m/")}

    assert listed == {"m/a.json": {}, "m/b.json": {}, "m/c.json": {"images": "2"}}
    assert store.read("m/c.json") == b"c2"
    assert list(store.list("m/")) == ["m/a.json", "m/b.json", "m/c.json"]  # the local index stays hidden
    with pytest.raises(ValueError, match="metadata name"):
        store.write("m/d.json", b"d", {"Not-An-Identifier": "x"})
    with pytest.raises(ValueError, match="printable ASCII"):
        store.write("m/d.json", b"d", {"worker": "vm-ü"})
    assert not store.exists("m/d.json")


def test_create_refuses_a_taken_name_and_leaves_it_alone(store: ObjectStore) -> None:
    store.create("runs/x/manifest.json", b"first")
    with pytest.raises(ObjectExistsError, match=r"manifest\.json already exists"):
        store.create("runs/x/manifest.json", b"second")
    assert store.read("runs/x/manifest.json") == b"first"
    assert list(store.list("runs/x/")) == ["runs/x/manifest.json"]  # no temp file left behind


def race_to_create(store: ObjectStore, name: str, writers: int) -> list[int]:
    """`writers` threads create `name` at the same moment; the writers that succeeded."""
    barrier = threading.Barrier(writers)
    won: list[int] = []

    def create(i: int) -> None:
        barrier.wait()
        with contextlib.suppress(ObjectExistsError):
            store.create(name, f"writer {i}".encode())
            won.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_of_threads_creating_one_name_at_once_exactly_one_wins(store: ObjectStore) -> None:
    for round_ in range(5):
        [winner] = race_to_create(store, f"race/{round_}.json", writers=8)
        assert store.read(f"race/{round_}.json") == f"writer {winner}".encode()


def test_manifests_are_created_once(store: ObjectStore) -> None:
    runs = RunStore(store)
    manifest = Manifest(
        run_id="once", source="/d", task="classification", batch_size=1, queue="q", images=1, batches={"b0": ["a"]}
    )
    runs.create_manifest(manifest)
    runs.create_manifest(manifest)  # our own write again (a retry whose first response was lost): fine
    other = manifest.model_copy(update={"source": "/elsewhere"})
    with pytest.raises(RunExistsError, match="run once already exists"):
        runs.create_manifest(other)
    assert runs.read_manifest("once") == manifest


CRASH_BEFORE_RENAME = """
import os, sys
from pathlib import Path
from workpool.storage.local import LocalStore
os.replace = lambda *a: os._exit(9)  # the process dies after the index line, before the rename
LocalStore(Path(sys.argv[1])).write("d/x.json", b"new", {"images": "2"})
"""


def test_a_local_write_killed_before_its_rename_leaves_the_old_object_and_metadata(tmp_path: Path) -> None:
    from workpool.storage.local import INDEX, LocalStore

    store = LocalStore(tmp_path / "store")
    store.write("d/x.json", b"old", {"images": "1"})
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_BEFORE_RENAME, str(store.root)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert crashed.returncode == 9, crashed.stderr
    # A line torn by a crash mid-append is skipped too
    with (store.root / "d" / INDEX).open("a") as index:
        index.write('{"name": "x.json", "file": [1, 2')

    [info] = store.list_info("d/")

    assert (info.name, dict(info.metadata)) == ("d/x.json", {"images": "1"})
    assert store.read("d/x.json") == b"old"
    store.write("d/x.json", b"newer", {"images": "3"})  # and the index still takes new lines
    assert [dict(i.metadata) for i in store.list_info("d/")] == [{"images": "3"}]


@pytest.mark.parametrize("backend", [pytest.param("azurite", marks=pytest.mark.azurite)])
def test_blob_listings_read_from_the_raw_xml_match_the_sdks_models(store: ObjectStore) -> None:
    from workpool.storage.blob import BlobStore

    assert isinstance(store, BlobStore)
    for i, name in enumerate(["p/a b.json", "p/ü.json", "p/x&y<z>.json", "p/plain.json"]):
        store.write(name, b"x", {"images": str(i), "worker": '"vm-1"'} if i % 2 else None)
    store.write("q/other.json", b"x", {"images": "9"})
    raw = sorted(store._list_info_raw("p/"), key=lambda info: info.name)
    sdk = sorted(store._list_info_sdk("p/"), key=lambda info: info.name)
    assert raw == sdk and len(raw) == 4
    assert [dict(info.metadata) for info in raw if info.name == "p/ü.json"] == [{"images": "1", "worker": '"vm-1"'}]


def test_runs_are_listed_by_folder_and_only_with_a_manifest(store: ObjectStore) -> None:
    runs = RunStore(store)
    for run_id in ("b-run", "a-run"):
        runs.write_manifest(
            Manifest(run_id=run_id, source="/d", task="t", batch_size=1, queue="q", images=1, batches={"b0": ["x"]})
        )
        runs.write_results(run_id, "b0", [])
    store.write("runs/orphan/results/b0.jsonl", b"")  # results left without a manifest
    store.write("runs/gone/manifest.json", b"{}")
    store.delete("runs/gone/manifest.json")  # a manifest removed again (on disk, its folder stays)

    assert list(store.list_folders("runs/")) == sorted({"a-run", "b-run", "orphan"} | ({"gone"} & _dirs(store)))
    assert runs.list_runs() == ["a-run", "b-run"]


def _dirs(store: ObjectStore) -> set[str]:
    """Folders that outlive their objects: local directories do, blob prefixes do not."""
    from workpool.storage.local import LocalStore

    return {"gone"} if isinstance(store, LocalStore) else set()
