"""`producer enqueue`, end to end through the real CLI, on the embedded backend and on Azurite.

Each test is a story: given a source, when the user enqueues it, then the manifest and the queue
hold exactly the listing, cut into batches that any client can read.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from tests.conftest import backend_env
from tests.support.producer_cli import drain_bodies, drain_messages, producer, queue_depth, recorded_runs
from workpool.messages import MAX_MESSAGE_BYTES, BatchMessage, encoded_size
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

SLEEP = "consumer.tasks.examples:SleepTask"  # a task that needs no model
# Blob sources need Azure Storage: these stories run on Azurite only.
AZURITE_ONLY = pytest.mark.parametrize("backend", [pytest.param("azurite", marks=pytest.mark.azurite)])


def make_images(folder: Path, names: list[str]) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not really pixels: the producer never opens images")


def upload(settings: Settings, container: str, names: list[str]) -> None:
    assert settings.connection_string is not None
    service = BlobServiceClient.from_connection_string(settings.connection_string.get_secret_value())
    client = service.get_container_client(container)
    client.create_container()
    for name in names:
        client.upload_blob(name, b"tiny")


def test_a_directory_becomes_a_manifest_and_one_message_per_batch(settings: Settings, tmp_path: Path) -> None:
    # Given a folder of images in subfolders, with mixed-case extensions and a few non-images
    images = [f"cats/c{i:02d}.JPG" for i in range(7)] + [f"dogs/d{i}.png" for i in range(5)] + ["top.webp"]
    make_images(tmp_path / "src", [*images, "notes.txt", "cats/thumbs.db", ".hidden.jpg"])

    # When it is enqueued with batches of 4
    out = producer(
        settings, "enqueue", str(tmp_path / "src"), "--task", SLEEP, "--run", "cats-1", "--batch-size", "4", "--json"
    )

    # Then the JSON summary (and only it) is on stdout
    assert out.code == 0, out.stderr
    summary = out.json()
    assert summary["run_id"] == "cats-1"
    assert (summary["images"], summary["batches"], summary["skipped"]) == (13, 4, 2)
    assert summary["source"] == str((tmp_path / "src").absolute())

    # And the manifest records every batch, in sorted order, before any message was read
    manifest = RunStore(open_result_store(settings)).read_manifest("cats-1")
    assert list(manifest.batches) == ["b000000", "b000001", "b000002", "b000003"]
    assert [name for batch in manifest.batches.values() for name in batch] == sorted(images)
    assert (manifest.task, manifest.batch_size, manifest.images) == (SLEEP, 4, 13)
    assert manifest.queue == settings.queue

    # And the queue holds one valid message per manifest batch, with the same images
    messages = drain_messages(settings)
    assert {m.batch_id: m.images for m in messages} == manifest.batches
    assert {(m.run_id, m.source, m.task) for m in messages} == {("cats-1", summary["source"], SLEEP)}


def test_the_human_summary_names_the_run_and_what_to_do_next(settings: Settings, tmp_path: Path) -> None:
    make_images(tmp_path / "src", ["a.jpg", "b.jpeg", "c.gif", "readme.md"])
    out = producer(settings, "enqueue", str(tmp_path / "src"), "--task", SLEEP, "--run", "human-1")
    assert out.code == 0, out.stderr
    assert "Enqueued run human-1: 3 images in 1 batch of up to 64" in out.stdout
    assert "1 file skipped: not images" in out.stdout
    assert "orchestration wait --run human-1" in out.stdout


def test_a_generated_run_id_is_valid_and_dated(settings: Settings, tmp_path: Path) -> None:
    make_images(tmp_path / "src", ["a.jpg"])
    out = producer(settings, "enqueue", str(tmp_path / "src"), "--task", SLEEP, "--json")
    assert out.code == 0, out.stderr
    run_id = out.json()["run_id"]
    assert run_id.startswith("run-20") and len(run_id) == len("run-YYYYmmdd-HHMMSS-xxxx")
    [message] = drain_messages(settings)
    assert message.run_id == run_id
    assert recorded_runs(settings) == [run_id]


def test_task_model_labels_and_limit_travel_in_every_message(settings: Settings, tmp_path: Path) -> None:
    make_images(tmp_path / "src", [f"i{i:03d}.jpg" for i in range(50)])
    (tmp_path / "model.keras").write_bytes(b"model")
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    out = producer(
        settings,
        "enqueue", str(tmp_path / "src"), "--run", "custom-1", "--batch-size", "8", "--limit", "20",
        "--task", "my_tasks.scoring:Tiles", "--model", str(tmp_path / "model.keras"),
        "--labels", str(tmp_path / "labels.txt"), "--json",
    )  # fmt: skip
    assert out.code == 0, out.stderr
    assert (out.json()["images"], out.json()["batches"]) == (20, 3)
    messages = drain_messages(settings)
    assert sorted(name for m in messages for name in m.images) == [f"i{i:03d}.jpg" for i in range(20)]
    assert {(m.task, m.model, m.labels) for m in messages} == {
        ("my_tasks.scoring:Tiles", str(tmp_path / "model.keras"), str(tmp_path / "labels.txt"))
    }
    # The custom task's package is not installed here: a warning, not a refusal.
    assert "my_tasks" in out.stderr and "not importable here" in out.stderr


def test_a_list_file_with_comments_blank_lines_crlf_and_repeats(settings: Settings, tmp_path: Path) -> None:
    listing = tmp_path / "lists" / "names.txt"
    listing.parent.mkdir()
    listing.write_bytes(b"# exported names\r\nb/2.jpg\r\n\r\na/1.PNG\r\nb/2.jpg\r\nnotes.pdf\r\n")
    out = producer(settings, "enqueue", f"@{listing}", "--task", SLEEP, "--run", "list-1", "--json")
    assert out.code == 0, out.stderr
    summary = out.json()
    assert (summary["images"], summary["skipped"], summary["duplicates"]) == (2, 1, 1)
    assert summary["source"] == str(listing.parent)
    [message] = drain_messages(settings)
    assert message.images == ["a/1.PNG", "b/2.jpg"]


def test_long_and_unicode_names_split_into_more_batches_never_over_64_kib(settings: Settings, tmp_path: Path) -> None:
    # Names of ~2.6 KB each once JSON- and XML-escaped: 64 of them could never share a message.
    names = [f"{i:03d}-" + "猫&<é>" * 190 + ".jpg" for i in range(120)]
    (tmp_path / "names.txt").write_text("\n".join(names), encoding="utf-8")
    out = producer(settings, "enqueue", f"@{tmp_path / 'names.txt'}", "--task", SLEEP, "--run", "long-1", "--json")
    assert out.code == 0, out.stderr
    assert out.json()["batches"] > 2  # 120 names at 64 per batch would be 2

    bodies = drain_bodies(settings)
    assert len(bodies) == out.json()["batches"]
    assert all(encoded_size(body) <= MAX_MESSAGE_BYTES for body in bodies)
    messages = [BatchMessage.decode(body) for body in bodies]
    assert sorted(name for m in messages for name in m.images) == sorted(names)


@AZURITE_ONLY
def test_a_blob_folder_is_enqueued_and_any_queue_client_can_read_it(settings: Settings) -> None:
    # Given a container with a folder of images, a sibling folder that shares its prefix, and non-images
    container = f"photos{uuid.uuid4().hex[:8]}"
    images = [f"shoot/{i:02d}.jpg" for i in range(30)] + ["shoot/raw/x.PNG", "shoot/ünï ✓.jpeg"]
    upload(settings, container, [*images, "shoot/list.csv", "shooting/other.jpg", "top.jpg"])

    # When the folder is enqueued (the prefix is a folder: "shoot" does not take in "shooting/")
    out = producer(
        settings,
        "enqueue",
        f"az://{container}/shoot",
        "--task",
        SLEEP,
        "--run",
        "blob-1",
        "--batch-size",
        "10",
        "--json",
    )

    # Then a plain azure-storage-queue client reads every message, and each decodes to the schema
    assert out.code == 0, out.stderr
    assert (out.json()["images"], out.json()["batches"], out.json()["skipped"]) == (32, 4, 1)
    assert out.stderr == ""  # no noise: no warnings from the SDK's connection pools either
    messages = drain_messages(settings)
    assert len(messages) == 4
    assert {m.source for m in messages} == {f"az://{container}/shoot"}
    union = [name for m in sorted(messages, key=lambda m: m.batch_id) for name in m.images]
    assert union == sorted(name.removeprefix("shoot/") for name in images)


@AZURITE_ONLY
def test_long_unicode_blob_names_split_and_azure_accepts_every_message(settings: Settings) -> None:
    container = f"long{uuid.uuid4().hex[:8]}"
    # Blob names stop at 1,024 characters; these are ~1,000, about 2.6 KB each on the wire.
    names = [f"{i:02d}-" + "猫&<é>" * 199 + ".jpg" for i in range(40)]
    upload(settings, container, names)
    out = producer(settings, "enqueue", f"az://{container}", "--task", SLEEP, "--run", "long-blob-1", "--json")
    assert out.code == 0, out.stderr
    bodies = drain_bodies(settings)
    assert len(bodies) == out.json()["batches"] >= 2  # 40 names would be one batch of 64
    assert all(encoded_size(body) <= MAX_MESSAGE_BYTES for body in bodies)
    assert sorted(n for body in bodies for n in BatchMessage.decode(body).images) == sorted(names)


def test_the_queue_and_result_store_are_created_when_missing(settings: Settings, tmp_path: Path) -> None:
    assert recorded_runs(settings) == [] and queue_depth(settings) == 0
    make_images(tmp_path / "src", ["a.jpg", "b.jpg"])
    out = producer(settings, "enqueue", str(tmp_path / "src"), "--task", SLEEP, "--run", "fresh-1", "--batch-size", "1")
    assert out.code == 0, out.stderr
    assert recorded_runs(settings) == ["fresh-1"]
    assert queue_depth(settings) == 2


@pytest.mark.parametrize("backend", ["embedded"])
def test_a_terminal_gets_a_progress_bar_on_stderr_and_json_stays_clean(settings: Settings, tmp_path: Path) -> None:
    # Given stderr is a terminal (a pseudo-terminal here) and stdout a pipe
    make_images(tmp_path / "src", [f"{i:03d}.jpg" for i in range(300)])
    controller, terminal = pty.openpty()
    shown = bytearray()

    def read_terminal() -> None:  # concurrently, so a full terminal buffer never blocks the child
        with contextlib.suppress(OSError):  # EIO once the child has closed its end
            while chunk := os.read(controller, 65536):
                shown.extend(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    args = ["enqueue", str(tmp_path / "src"), "--task", SLEEP, "--run", "tty-1", "--batch-size", "1", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer", *args],
        env={**backend_env(settings), "COLUMNS": "100", "TERM": "xterm"},
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    os.close(terminal)
    stdout, _ = proc.communicate(timeout=60)
    reader.join(timeout=10)
    os.close(controller)

    # Then the bar ran to 300/300 on the terminal, and stdout holds only the JSON summary
    assert proc.returncode == 0
    assert "enqueue tty-1" in shown.decode(errors="replace")
    assert "300/300" in shown.decode(errors="replace")
    assert json.loads(stdout)["batches"] == 300


@AZURITE_ONLY
def test_blob_models_are_checked_before_anything_is_sent(settings: Settings, tmp_path: Path) -> None:
    # Given a models container with one .keras blob and one SavedModel folder
    container = f"models{uuid.uuid4().hex[:8]}"
    upload(settings, container, ["cloth.keras", "inception/saved_model.pb", "inception/variables/v.index"])
    make_images(tmp_path / "src", ["a.jpg"])

    # When a run names a model blob or a model folder, the URI travels in the messages as given
    for run_id, model in [("m-1", f"az://{container}/cloth.keras"), ("m-2", f"az://{container}/inception")]:
        out = producer(settings, "enqueue", str(tmp_path / "src"), "--run", run_id, "--model", model, "--json")
        assert out.code == 0, out.stderr
        [message] = drain_messages(settings)
        assert message.model == model

    # And a model that is not there is bad input: exit 2, nothing sent, no manifest
    out = producer(settings, "enqueue", str(tmp_path / "src"), "--run", "m-3", "--model", f"az://{container}/nope.h5")
    assert out.code == 2
    assert "does not exist" in out.stderr
    assert queue_depth(settings) == 0
    assert recorded_runs(settings) == ["m-1", "m-2"]


@pytest.mark.parametrize("backend", ["embedded"])
def test_a_config_file_is_read_before_or_after_the_command_and_flags_win(settings: Settings, tmp_path: Path) -> None:
    make_images(tmp_path / "src", [f"{i}.jpg" for i in range(6)])
    config = tmp_path / "workpool.toml"
    config.write_text("batch_size = 2\n")

    src = str(tmp_path / "src")
    before = producer(settings, "--config", str(config), "enqueue", src, "--task", SLEEP, "--run", "c-1", "--json")
    after = producer(settings, "enqueue", src, "--task", SLEEP, "--run", "c-2", "--config", str(config), "--json")
    flag = producer(
        settings,
        "enqueue",
        src,
        "--task",
        SLEEP,
        "--run",
        "c-3",
        "--config",
        str(config),
        "--batch-size",
        "4",
        "--json",
    )
    assert (before.code, after.code, flag.code) == (0, 0, 0), (before.stderr, after.stderr, flag.stderr)
    assert (before.json()["batches"], after.json()["batches"], flag.json()["batches"]) == (3, 3, 2)

    broken = tmp_path / "broken.toml"
    broken.write_text("batch_size = [")
    out = producer(settings, "--config", str(broken), "enqueue", str(tmp_path / "src"), "--task", SLEEP, "--run", "c-4")
    assert out.code == 2 and "not valid TOML" in out.stderr
