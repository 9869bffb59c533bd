"""The consumer scores what the model says, maps every row to its image, and survives bad images.

Each story runs the real consumer in this process (queue, prefetch thread, decode pool, lease
keeper, worker) on the embedded backend and on Azurite, with models saved as real `.keras`
files. Images come from a local folder (embedded) or a blob container (Azurite).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consumer.images import decode_image
from consumer.runner import Consumer
from tests.support.images import (
    MISSING_IMAGE,
    solid_color_image,
    stage_folder,
    write_bad_image_corpus,
    write_sample_images,
)
from tests.support.messages import record_runs
from tests.support.models import (
    CLOTH_HEADS,
    save_cloth_model,
    save_identity_model,
    save_inception_v3,
    save_tiny_classifier,
    save_vgg16,
)
from tests.support.shared import build_once
from workpool.messages import BatchMessage
from workpool.queue import open_queue
from workpool.runs import ResultRow, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every model these stories use, built once per session (the smallest inputs Keras allows),
    shared by every xdist worker (tests/support/shared.py)."""

    def build(folder: Path) -> dict[str, Path]:
        return {
            "inception_v3": save_inception_v3(folder, (75, 75), sharpen=300),
            "vgg16": save_vgg16(folder, (32, 32), sharpen=300),
            "cloth": save_cloth_model(folder / "cloth"),
            "identity": save_identity_model(folder),
            "tiny": save_tiny_classifier(folder),
        }

    return build_once(tmp_path_factory, "scoring-models", build)


def send(settings: Settings, *messages: BatchMessage) -> None:
    record_runs(settings, *messages)
    queue = open_queue(settings)
    queue.create()
    queue.send([m.encode() for m in messages])
    queue.close()


def drain(settings: Settings) -> Consumer:
    """Run one consumer until the queue has been empty for a moment."""
    consumer = Consumer(settings.model_copy(update={"idle_exit_s": 0.5}), "test-worker", poll_s=0.05)
    consumer.run()
    assert consumer.error is None
    return consumer


def results(settings: Settings, run_id: str, batch_id: str) -> list[ResultRow]:
    return RunStore(open_result_store(settings)).read_results(run_id, batch_id)


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("arch", "reference_preprocessing"),
    [("inception_v3", "inception_v3"), ("vgg16", "vgg16")],
)
def test_classification_scores_equal_a_direct_model_call(
    arch: str, reference_preprocessing: str, models: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    import keras

    # Given JPEGs and a batch for a random-weight model of the architecture, asking for all
    # 1000 scores (labels options), so every score can be compared
    names = write_sample_images(tmp_path / "images", 5, (240, 180))
    source = stage_folder(settings, tmp_path / "images")
    options = write_json(tmp_path / "options.json", {"top_k": 1000})
    send(settings, BatchMessage(run_id="r1", batch_id="b1", task="classification", model=str(models[arch]),
                                labels=str(options), source=source, images=names))  # fmt: skip

    # When a consumer drains the queue
    drain(settings)

    # Then every score equals the model called directly on the same decoded pixels, preprocessed
    # by Keras' own function for the family
    model = keras.saving.load_model(models[arch])
    size = tuple(model.inputs[0].shape[1:3])
    pixels = np.stack([decode_image((tmp_path / "images" / n).read_bytes(), size) for n in names])
    preprocess_input = getattr(keras.applications, reference_preprocessing).preprocess_input
    expected = np.asarray(model(preprocess_input(pixels.astype("float32")), training=False))
    rows = results(settings, "r1", "b1")
    assert [r.image for r in rows] == names
    for row, reference in zip(rows, expected, strict=True):
        assert row.status == "ok"
        scores = np.zeros(1000, dtype=np.float64)
        for p in row.predictions:
            scores[p["index"]] = p["score"]
        assert np.max(np.abs(scores - reference)) <= 1e-5
        assert row.predictions[0]["index"] == int(np.argmax(reference))
        assert [p["score"] for p in row.predictions] == sorted((p["score"] for p in row.predictions), reverse=True)
    # ImageNet names are used for a 1000-class model without labels
    assert rows[0].predictions[0]["label"] != str(rows[0].predictions[0]["index"])


def test_cloth_heads_equal_a_direct_model_call(models: dict[str, Path], settings: Settings, tmp_path: Path) -> None:
    import keras

    # Given a two-head model with its head spec beside it, both read from the backend's store
    names = write_sample_images(tmp_path / "images", 4, (120, 90))
    source = stage_folder(settings, tmp_path / "images")
    model_uri = stage_folder(settings, models["cloth"].parent) + "/cloth.keras"
    send(settings, BatchMessage(run_id="r1", batch_id="b1", task="cloth_recognition", model=model_uri,
                                source=source, images=names))  # fmt: skip

    # When a consumer drains the queue
    drain(settings)

    # Then each row has one entry per head, scored exactly as the model scores them
    model = keras.saving.load_model(models["cloth"])
    pixels = np.stack([decode_image((tmp_path / "images" / n).read_bytes(), (32, 32)) for n in names])
    category, attributes = (np.asarray(o) for o in model(pixels.astype("float32"), training=False))
    category_head, attribute_head = CLOTH_HEADS["heads"]
    for i, row in enumerate(results(settings, "r1", "b1")):
        assert set(row.predictions) == {"category", "attributes"}
        top2 = np.argsort(-category[i])[:2]
        assert [p["label"] for p in row.predictions["category"]] == [category_head["labels"][j] for j in top2]
        for p, j in zip(row.predictions["category"], top2, strict=True):
            assert abs(p["score"] - category[i, j]) <= 1e-5
        over = {attribute_head["labels"][j]: attributes[i, j] for j in range(3) if attributes[i, j] >= 0.3}
        assert {p["label"] for p in row.predictions["attributes"]} == set(over)
        for p in row.predictions["attributes"]:
            assert abs(p["score"] - over[p["label"]]) <= 1e-5


def test_rows_map_to_their_images(models: dict[str, Path], settings: Settings, tmp_path: Path) -> None:
    # Given images of distinct solid colours, interleaved with broken and missing ones, and a
    # model whose output is the mean of each input channel (so a row names its own image)
    colours = {f"c{i:02d}.png": (i * 20, 255 - i * 20, (i * 37) % 256) for i in range(10)}
    for name, rgb in colours.items():
        solid_color_image(tmp_path / "images", name, rgb)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not an image")
    names = list(colours)
    names[3:3] = ["broken.jpg"]
    names[7:7] = [MISSING_IMAGE]
    spec = write_json(tmp_path / "means.json", {
        "preprocess": "raw",
        "heads": [{"name": "mean", "activation": "sigmoid", "labels": ["r", "g", "b"], "threshold": 0.0}],
    })  # fmt: skip
    source = stage_folder(settings, tmp_path / "images")
    send(settings, BatchMessage(run_id="r1", batch_id="b1", task="cloth_recognition", model=str(models["identity"]),
                                labels=str(spec), source=source, images=names))  # fmt: skip

    # When a consumer drains the queue
    drain(settings)

    # Then each row is for its image, in message order, and carries that image's colour
    rows = results(settings, "r1", "b1")
    assert [r.image for r in rows] == names
    for row in rows:
        if row.image in colours:
            means = {p["label"]: p["score"] for p in row.predictions["mean"]}
            assert (means["r"], means["g"], means["b"]) == pytest.approx(colours[row.image], abs=1e-3)
        else:
            assert row.status == "error" and row.error


def test_bad_image_corpus_gives_one_row_each_and_the_consumer_goes_on(
    models: dict[str, Path], settings: Settings, tmp_path: Path
) -> None:
    # Given the corpus of broken and awkward images in one batch, and a good batch after it
    expected = write_bad_image_corpus(tmp_path / "images")
    good = write_sample_images(tmp_path / "images", 3, (64, 48), prefix="good_")
    source = stage_folder(settings, tmp_path / "images")
    model = str(models["tiny"])
    send(
        settings,
        BatchMessage(
            run_id="r1", batch_id="bad", task="classification", model=model, source=source, images=list(expected)
        ),
        BatchMessage(run_id="r1", batch_id="good", task="classification", model=model, source=source, images=good),
    )

    # When one consumer drains the queue
    consumer = drain(settings)

    # Then every image has exactly one row with the expected status, errors with a reason
    rows = results(settings, "r1", "bad")
    assert [r.image for r in rows] == list(expected)
    assert {r.image: r.status for r in rows} == expected
    reasons = {r.image: r.error for r in rows if r.status == "error"}
    assert all(reasons.values())
    assert reasons[MISSING_IMAGE] == "not found"
    assert "empty" in reasons["zero_bytes.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "too many pixels" in reasons["bomb.png"]
    assert "not an image" in reasons["text_named.jpg"]
    # And the same consumer went on to score the next batch; nothing is left on the queue
    assert [r.status for r in results(settings, "r1", "good")] == ["ok"] * 3
    assert consumer.images_processed == len(expected) + 3
    assert open_queue(settings).depth().messages == 0


def test_labels_file_names_the_classes(models: dict[str, Path], settings: Settings, tmp_path: Path) -> None:
    # Given a 10-class model and a labels file with one name per line
    names = write_sample_images(tmp_path / "images", 2, (64, 48))
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class-{i}\n" for i in range(10)))
    source = stage_folder(settings, tmp_path / "images")
    send(settings, BatchMessage(run_id="r1", batch_id="b1", task="classification", model=str(models["tiny"]),
                                labels=str(labels), source=source, images=names))  # fmt: skip

    # When a consumer drains the queue
    drain(settings)

    # Then rows carry the top 5 of those names, with their indexes
    for row in results(settings, "r1", "b1"):
        assert len(row.predictions) == 5
        assert all(p["label"] == f"class-{p['index']}" for p in row.predictions)


@pytest.mark.embedded
def test_h5_and_savedmodel_files_score_like_the_keras_file(models: dict[str, Path], tmp_path: Path) -> None:
    import warnings

    import keras

    from workpool.settings import load_settings

    # Given the same model saved as .keras, as legacy .h5 and exported as a SavedModel folder
    model = keras.saving.load_model(models["tiny"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that HDF5 is a legacy format: that is the point
        model.save(tmp_path / "tiny.h5")
        model.export(tmp_path / "tiny_savedmodel", format="tf_saved_model", verbose=False)
    options = write_json(tmp_path / "options.json", {"top_k": 10, "input_size": [32, 32], "preprocess": "raw"})
    names = write_sample_images(tmp_path / "images", 3, (64, 48))
    # (a SavedModel runs its graph's code: opted in, as docs/security.md says)
    settings = load_settings(home=tmp_path / "home", queue="formats", allow_unsafe_models=True)
    send(settings, *(
        BatchMessage(run_id=f"r-{kind}", batch_id=kind, task="classification", model=str(path), labels=str(options),
                     source=str(tmp_path / "images"), images=names)
        for kind, path in (("keras", models["tiny"]), ("h5", tmp_path / "tiny.h5"),
                           ("savedmodel", tmp_path / "tiny_savedmodel"))
    ))  # fmt: skip

    # When a consumer drains the queue
    drain(settings)

    # Then all three formats give the same scores
    def scores(batch_id: str) -> list[dict[int, float]]:
        return [{p["index"]: p["score"] for p in r.predictions} for r in results(settings, f"r-{batch_id}", batch_id)]

    reference = scores("keras")
    for kind in ("h5", "savedmodel"):
        for got, want in zip(scores(kind), reference, strict=True):
            assert got.keys() == want.keys()
            assert max(abs(got[k] - want[k]) for k in want) <= 1e-5


@pytest.mark.embedded
def test_a_model_that_runs_code_when_loaded_is_refused_unless_allowed(tmp_path: Path) -> None:
    import keras

    from workpool.queue import PoisonRecord
    from workpool.settings import load_settings

    # Given a model with a Lambda layer (its file holds Python code, run when it is loaded)
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Lambda(lambda x: x * 2.0)(keras.layers.GlobalAveragePooling2D()(inputs))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs, name="lambda_model").save(path)
    names = write_sample_images(tmp_path / "images", 1, (16, 16))
    settings = load_settings(home=tmp_path / "home", queue="unsafe", max_attempts=1)
    message = BatchMessage(run_id="r1", batch_id="b1", task="classification", model=str(path),
                           source=str(tmp_path / "images"), images=names)  # fmt: skip

    # When a consumer with default settings gets it
    send(settings, message)
    drain(settings)

    # Then the batch is dead-lettered with a reason that says how to allow it
    [poisoned] = open_queue(settings).poison().receive(1)
    assert "--allow-unsafe-models" in PoisonRecord.decode(poisoned.body).reason

    # And a consumer allowed to run unsafe models scores it
    send(settings, message)
    drain(settings.model_copy(update={"allow_unsafe_models": True}))
    [row] = results(settings, "r1", "b1")
    assert row.status == "ok"


@pytest.mark.azurite
def test_a_blob_model_is_downloaded_once_per_node(models: dict[str, Path], azurite: Any, tmp_path: Path) -> None:
    from consumer.models import ModelCache
    from workpool.settings import load_settings

    # Given a model in a blob container
    settings = load_settings(home=tmp_path / "home", queue="models", connection_string=azurite.connection_string)
    uri = stage_folder(settings, models["cloth"].parent, container="models-once") + "/cloth.keras"

    # When one worker process loads it, and the blob is then deleted
    first = ModelCache(settings).get(uri)
    store, prefix = __import__("workpool.storage", fromlist=["open_location"]).open_location(settings, uri)
    store.delete(prefix)

    # Then another worker process on the same node loads it from the node's cache
    second = ModelCache(settings).get(uri)
    assert second.name == first.name == "cloth"
    assert list((tmp_path / "home" / "models").rglob("cloth.keras"))


@pytest.mark.embedded
def test_mixed_precision_scores_in_float16_close_to_float32(models: dict[str, Path], tmp_path: Path) -> None:
    from consumer.models import ModelCache
    from workpool.settings import load_settings

    # Given the same model loaded in float32 and in mixed precision
    exact = ModelCache(load_settings(home=tmp_path)).get(str(models["cloth"]))
    mixed = ModelCache(load_settings(home=tmp_path, precision="mixed")).get(str(models["cloth"]))
    x = np.random.default_rng(0).uniform(0, 255, size=(4, 32, 32, 3)).astype(np.float32)

    # When both score the same batch
    want, got = exact(x), mixed(x)

    # Then the mixed model's scores are float32 outputs close to the exact ones, but not identical
    # (the hidden layers really computed in float16)
    assert isinstance(want, list) and isinstance(got, list)
    for w, g in zip(want, got, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, atol=2e-2)
    assert any(not np.array_equal(w, g) for w, g in zip(want, got, strict=True))


@pytest.mark.embedded
def test_an_xla_compiled_model_scores_like_the_plain_call(models: dict[str, Path], tmp_path: Path) -> None:
    from consumer.models import ModelCache
    from workpool.settings import load_settings

    # Given the same model loaded plainly and compiled with XLA
    plain = ModelCache(load_settings(home=tmp_path)).get(str(models["tiny"]))
    compiled = ModelCache(load_settings(home=tmp_path, xla=True)).get(str(models["tiny"]))
    x = np.random.default_rng(1).uniform(-1, 1, size=(3, 32, 32, 3)).astype(np.float32)

    # Then both give the same scores
    np.testing.assert_allclose(np.asarray(compiled(x)), np.asarray(plain(x)), atol=1e-5)


@pytest.mark.azurite
def test_a_savedmodel_folder_in_a_blob_container_is_downloaded_whole(
    models: dict[str, Path], azurite: Any, tmp_path: Path
) -> None:
    import warnings

    import keras

    from consumer.models import ModelCache
    from workpool.settings import load_settings

    # Given the tiny model exported as a SavedModel folder and uploaded under a blob prefix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keras.saving.load_model(models["tiny"]).export(tmp_path / "tiny_sm", format="tf_saved_model", verbose=False)
    settings = load_settings(home=tmp_path / "home", queue="savedmodel", connection_string=azurite.connection_string,
                             allow_unsafe_models=True)  # fmt: skip
    uri = stage_folder(settings, tmp_path / "tiny_sm", container="models-sm")

    # When a consumer loads it by the folder's URI
    loaded = ModelCache(settings).get(uri)

    # Then every file of the folder was fetched and the model scores like the .keras original
    assert (next((tmp_path / "home" / "models").rglob("saved_model.pb"))).is_file()
    x = np.random.default_rng(2).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    want = np.asarray(keras.saving.load_model(models["tiny"])(x, training=False))
    got = loaded(x)
    got = next(iter(got.values())) if isinstance(got, dict) else got
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
