"""Hostile models: a SavedModel's graph runs only with the opt-in; its download stays in its folder.

The SavedModel here is real: its serving function writes a marker file (TensorFlow's `WriteFile`
op), the proof, from outside the consumer, of whether the graph ever ran. The blob names are real
too: a SavedModel prefix on Azurite holding `<prefix>//<absolute path>`, which a download that joins
names onto its staging folder would write at that absolute path. Each refusal goes to poison on the
first delivery, with its reason, while a legitimate run in the same queue is scored.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.faults_pool import check_every_image_once, enqueue_run, figures_line, run_store, unique_images
from tests.support.images import stage_folder
from tests.support.messages import record_runs
from tests.support.models import save_tiny_classifier
from workpool.messages import BatchMessage
from workpool.queue import PoisonRecord, open_queue
from workpool.settings import Settings, load_settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}
SIZE = 16


def save_marker_writing_saved_model(folder: Path, marker: Path) -> Path:
    """A SavedModel whose serving graph writes `marker` each time it runs; labels JSON beside it."""
    import tensorflow as tf

    class Probe(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)])  # type: ignore[misc]
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            tf.io.write_file(str(marker), "the graph ran")
            return {"scores": tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]))}

    probe = Probe()
    path = folder / "probe_savedmodel"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf.saved_model.save(probe, str(path), signatures={"serving_default": probe.serve})
    labels = {"labels": ["red", "green", "blue"], "input_size": [SIZE, SIZE], "preprocess": "raw"}
    (folder / "probe.labels.json").write_text(json.dumps(labels))
    return path


def poisoned(settings: Settings) -> dict[str, PoisonRecord]:
    with open_queue(settings) as queue:
        held = queue.poison().receive(32, visibility_timeout_s=30)
        for message in held:
            queue.poison().release(message)  # looked at, left for `requeue --failed`
    records = [PoisonRecord.decode(m.body) for m in held]
    return {json.loads(r.body)["run_id"]: r for r in records}


@pytest.mark.embedded
def test_a_saved_model_runs_only_with_the_opt_in(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", queue="savedmodel")
    marker = tmp_path / "graph-ran.txt"
    path = save_marker_writing_saved_model(tmp_path / "models", marker)
    tiny = save_tiny_classifier(tmp_path / "models")
    names = unique_images(tmp_path / "images", 4)
    # Given a legitimate run with a .keras model, and a run naming the SavedModel
    enqueue_run(settings, str(tmp_path / "images"), "legit", "--model", str(tiny), "--batch-size", "2")
    hostile = BatchMessage(run_id="graph", batch_id="b000000", task="classification", model=str(path),
                           labels=str(tmp_path / "models" / "probe.labels.json"), source=str(tmp_path / "images"),
                           images=names)  # fmt: skip
    record_runs(settings, hostile)
    with open_queue(settings) as queue:
        queue.send([hostile.encode()])

    # When a consumer with default settings drains the queue
    refused = run_cli("consumer", settings, "run", "--idle-exit-s", "2", "--worker-id", "safe", env=QUIET,
                      timeout_s=180)  # fmt: skip

    # Then the legitimate run is scored, the SavedModel's run is in poison at once, and its graph never ran
    assert refused.code == 0, refused.stdout + refused.stderr
    assert refused.stdout.strip().splitlines()[-1].startswith(f"Worker safe Processed {len(names)} images")
    records = poisoned(settings)
    assert list(records) == ["graph"] and records["graph"].attempts == 1
    assert "SavedModel" in records["graph"].reason and "--allow-unsafe-models" in records["graph"].reason
    assert not marker.exists()
    assert check_every_image_once(settings, "legit", names, tmp_path / "legit.jsonl").ok == len(names)

    # When the operator opts in and requeues it
    assert run_cli("producer", settings, "requeue", "--run", "graph", "--failed").code == 0
    allowed = run_cli("consumer", settings, "run", "--idle-exit-s", "2", "--worker-id", "trusting",
                      "--allow-unsafe-models", env=QUIET, timeout_s=180)  # fmt: skip

    # Then it scores, and its graph did run (it could as well have read or written any file)
    assert allowed.code == 0, allowed.stdout + allowed.stderr
    assert allowed.stdout.strip().splitlines()[-1].startswith(f"Worker trusting Processed {len(names)} images")
    assert marker.read_text() == "the graph ran"
    rows = run_store(settings).read_results("graph", "b000000")
    assert [r.status for r in rows] == ["ok"] * len(names)
    figures_line("security-savedmodel[embedded]", refused_attempts=records["graph"].attempts, graph_ran_refused=False)


@pytest.mark.azurite
def test_a_saved_model_download_never_writes_outside_its_folder(azurite: object, tmp_path: Path) -> None:
    conn = azurite.connection_string  # type: ignore[attr-defined]
    settings = load_settings(home=tmp_path / "home", queue="escape", connection_string=conn)
    models = "escape-models"
    # Given a models container holding a .keras model, one over the model size cap, and a real
    # SavedModel folder one of whose blobs is named `escape/sm//<absolute path>`
    tiny = save_tiny_classifier(tmp_path / "models")
    (tmp_path / "models" / "huge.keras").write_bytes(b"PK" + b"\0" * 300_000)
    save_marker_writing_saved_model(tmp_path / "models", tmp_path / "graph-ran.txt")
    models_uri = stage_folder(settings, tmp_path / "models", container=models)
    escaped = tmp_path / "escaped" / "bashrc"
    store, prefix = __import__("workpool.storage", fromlist=["open_location"]).open_location(settings, models_uri)
    store.write(f"{prefix}/probe_savedmodel/{escaped}", b"echo owned\n")
    assert f"{prefix}/probe_savedmodel/{escaped}".count("//") == 1
    names = unique_images(tmp_path / "images", 4)
    source = stage_folder(settings, tmp_path / "images", container="escape-src")
    enqueue_run(settings, source, "legit", "--model", f"{models_uri}/{tiny.name}", "--batch-size", "2")
    labels = f"{models_uri}/probe.labels.json"
    hostile = [
        BatchMessage(run_id="escape", batch_id="b000000", task="classification", labels=labels, source=source,
                     model=f"{models_uri}/probe_savedmodel", images=names[:1]),
        BatchMessage(run_id="huge", batch_id="b000000", task="classification", source=source,
                     model=f"{models_uri}/huge.keras", images=names[:1]),
    ]  # fmt: skip
    record_runs(settings, *hostile)
    with open_queue(settings) as queue:
        queue.send([m.encode() for m in hostile])

    # When a consumer that allows SavedModels and reads the models container drains the queue
    env = {**QUIET, "WORKPOOL_READ_CONTAINERS": models, "WORKPOOL_MAX_MODEL_BYTES": "200000"}
    out = run_cli("consumer", settings, "run", "--idle-exit-s", "2", "--worker-id", "w-esc", "--allow-unsafe-models",
                  env=env, timeout_s=180)  # fmt: skip

    # Then nothing was written outside the download folder, and both hostile runs are in poison at once
    assert out.code == 0, out.stdout + out.stderr
    assert not escaped.exists()
    records = poisoned(settings)
    assert set(records) == {"escape", "huge"} and {r.attempts for r in records.values()} == {1}
    assert "unsafe path segment ''" in records["escape"].reason
    assert "over the limit of 200000" in records["huge"].reason
    # and the legitimate run, whose model comes from the same container, is scored whole
    assert check_every_image_once(settings, "legit", names, tmp_path / "legit.jsonl").ok == len(names)
    figures_line("security-model-download[azurite]", escaped_files=0, poisoned_at_once=len(records))
