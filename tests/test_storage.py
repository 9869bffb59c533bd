"""Object stores (local directory, blob container) and the run layout, on both backends.

The same tests run on a local directory and on an Azurite blob container: the image-source
side (list under a prefix, sorted; read bytes; clear errors when missing) and the result-store
side (idempotent writes, manifest, results, timing and poison records).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from workpool.errors import NotFoundError, UsageError
from workpool.runs import BatchRecord, Manifest, PoisonReport, ResultRow, RunStore
from workpool.settings import Settings
from workpool.storage import ObjectStore, open_location, open_result_store, parse_location


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    s = open_result_store(settings)
    s.ensure()
    return s


def test_a_missing_directory_or_container_is_named(settings: Settings, tmp_path: Path) -> None:
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
