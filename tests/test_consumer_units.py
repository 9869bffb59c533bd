"""Small pieces of the consumer, each on its own: decoding, preprocessing, scores, specs, the
summary line. No TensorFlow and no storage here."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from consumer.images import decode_image
from consumer.preprocessing import mode_for_model_name, preprocess
from consumer.runner import format_took
from consumer.tasks.classification import as_probabilities
from consumer.tasks.cloth import parse_spec, spec_candidates
from consumer.tasks.custom import load_task_class
from consumer.tasks.examples import SleepTask
from tests.support.images import decompression_bomb_png, jpeg_bytes, sample_image
from workpool.errors import ImageError, MessageError, UsageError


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_exif_orientation_is_applied_so_a_sideways_photo_is_scored_upright() -> None:
    # Given a 64×32 photo, red on the left and blue on the right, stored with "rotate 90° CW"
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(Image.fromarray(pixels), "PNG", exif=exif.tobytes())

    # When it is decoded at its own size
    decoded = decode_image(data, None)

    # Then it is upright: 32 wide, 64 tall, red on top
    assert decoded.shape == (64, 32, 3)
    assert tuple(decoded[5, 16]) == (255, 0, 0) and tuple(decoded[60, 16]) == (0, 0, 255)


def test_16_bit_images_are_scaled_to_8_bits_not_clipped() -> None:
    wide = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    decoded = decode_image(encoded(Image.fromarray(wide), "PNG"), None)
    assert decoded[0, :, 0].tolist() == [0, 128, 255]


def test_alpha_is_dropped_and_colour_kept() -> None:
    rgba = Image.new("RGBA", (8, 8), (10, 200, 30, 0))
    assert tuple(decode_image(encoded(rgba, "PNG"), None)[0, 0]) == (10, 200, 30)


@pytest.mark.parametrize("size", [(500, 375), (800, 600), (120, 90)])
def test_jpegs_come_out_at_exactly_the_model_input_size(size: tuple[int, int]) -> None:
    decoded = decode_image(jpeg_bytes(sample_image(size)), (299, 299))
    assert decoded.shape == (299, 299, 3) and decoded.dtype == np.uint8


def test_a_decompression_bomb_is_refused_before_its_pixels_are_decoded() -> None:
    with pytest.raises(ImageError, match="too many pixels"):
        decode_image(decompression_bomb_png(), (32, 32))


def test_preprocessing_follows_the_model_family() -> None:
    pixel = np.array([[[0, 127, 255]]], dtype=np.uint8)
    assert mode_for_model_name("inception_v3") == "tf"
    assert mode_for_model_name("vgg16") == "caffe"
    assert mode_for_model_name("my_model") == "raw"
    np.testing.assert_allclose(preprocess(pixel, "tf")[0, 0], [-1.0, 127 / 127.5 - 1, 1.0], rtol=1e-6)
    # caffe: RGB → BGR, then the ImageNet means (B, G, R) are subtracted
    np.testing.assert_allclose(preprocess(pixel, "caffe")[0, 0], [255 - 103.939, 127 - 116.779, 0 - 123.68], rtol=1e-6)
    np.testing.assert_allclose(preprocess(pixel, "unit")[0, 0], [0, 127 / 255, 1], rtol=1e-6)
    assert preprocess(pixel, "raw").dtype == np.float32


def test_softmax_outputs_are_kept_and_logits_become_probabilities() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
    np.testing.assert_array_equal(as_probabilities(probabilities), probabilities)
    logits = np.array([[2.0, -1.0, 0.0]], dtype=np.float32)
    got = as_probabilities(logits)
    np.testing.assert_allclose(got.sum(axis=1), [1.0], rtol=1e-6)
    assert got.argmax() == 0


def test_a_head_spec_is_found_beside_the_model_and_checked() -> None:
    assert spec_candidates("az://models/cloth/v2.keras") == [
        "az://models/cloth/v2.keras.heads.json",
        "az://models/cloth/v2.heads.json",
    ]
    good = {"heads": [{"name": "category", "activation": "softmax", "labels": ["a", "b"]}]}
    assert parse_spec("spec.json", json.dumps(good).encode()).heads[0].top_k == 1
    twice = {"heads": [good["heads"][0], good["heads"][0]]}
    with pytest.raises(UsageError, match="unique"):
        parse_spec("spec.json", json.dumps(twice).encode())
    with pytest.raises(UsageError, match="activation"):
        parse_spec("spec.json", json.dumps({"heads": [{"name": "x", "activation": "relu", "labels": ["a"]}]}).encode())


def test_custom_tasks_are_imported_by_name_and_bad_names_are_message_errors() -> None:
    assert load_task_class("consumer.tasks.examples:SleepTask") is SleepTask
    for bad in ("os:path", "no.such.module:Task", "consumer.tasks.examples:Nope", "not a name"):
        with pytest.raises(MessageError, match="unknown task"):
            load_task_class(bad)


def test_the_summary_line_always_shows_microseconds() -> None:
    assert format_took(0) == "0:00:00.000000"
    assert format_took(3723.5) == "1:02:03.500000"
    assert format_took(90000.25) == "25:00:00.250000"


def test_worker_children_get_the_flags_their_parent_was_given() -> None:
    from workpool.handoff import child_env
    from workpool.settings import load_settings

    # `consumer run --workers N` hands its resolved settings (flags included) to its workers
    flags = {"idle_exit_s": 5.0, "max_attempts": None, "xla": False, "allow_unsafe_models": True, "precision": "mixed"}
    env = child_env(load_settings(**flags), base={})
    assert env["WORKPOOL_IDLE_EXIT_S"] == "5.0"
    assert env["WORKPOOL_ALLOW_UNSAFE_MODELS"] == "true"
    assert env["WORKPOOL_PRECISION"] == "mixed"
    assert "WORKPOOL_MAX_ATTEMPTS" not in env  # not given: the child resolves the same default


def per_image_top_k(scores: np.ndarray, k: int, names: list[str]) -> list[list[dict[str, object]]]:
    """The obvious per-image implementation, for comparison."""
    rows = []
    for row in scores:
        order = sorted(range(len(row)), key=lambda j: -row[j])[:k]
        rows.append([{"label": names[j], "index": j, "score": float(row[j])} for j in order])
    return rows


@pytest.mark.parametrize("k", [1, 5, 12])
def test_top_k_for_the_whole_batch_equals_the_per_image_ranking(k: int) -> None:
    from consumer.models import LoadedModel
    from consumer.tasks.classification import Classification, ClassificationOptions

    # Given softmax scores of 12 classes for 9 images (distinct values: the ranking is defined)
    rng = np.random.default_rng(4)
    scores = rng.permutation(9 * 12).reshape(9, 12).astype(np.float32) + 1
    scores /= scores.sum(axis=1, keepdims=True)
    names = [f"c{i}" for i in range(12)]
    model = LoadedModel(uri="mem://m", name="m", input_size=(4, 4), output_names=[], call=lambda b: b)
    task = Classification(model, names, ClassificationOptions(top_k=k))

    # When the batch is post-processed, the padding rows beyond `count` left out
    rows = task.postprocess(scores, 7)

    # Then each image gets its own k best, best first, as plain JSON values
    assert rows == per_image_top_k(scores[:7], k, names)
    assert all(type(p["index"]) is int and type(p["score"]) is float for row in rows for p in row)


def test_cloth_heads_for_the_whole_batch_equal_the_per_image_selection() -> None:
    from consumer.models import LoadedModel
    from consumer.tasks.cloth import ClothRecognition, HeadSpec

    spec = HeadSpec.model_validate({"heads": [
        {"name": "category", "activation": "softmax", "labels": ["a", "b", "c", "d"], "top_k": 2},
        {"name": "attributes", "activation": "sigmoid", "labels": ["x", "y", "z"], "threshold": 0.3},
    ]})  # fmt: skip
    model = LoadedModel(uri="mem://m", name="m", input_size=(4, 4), output_names=["category", "attributes"],
                        call=lambda b: b)  # fmt: skip
    task = ClothRecognition(model, spec)
    rng = np.random.default_rng(6)
    category = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    attributes = rng.uniform(0, 1, (6, 3)).astype(np.float32)
    attributes[0, 1] = np.float32(0.3)  # exactly at the threshold: kept

    rows = task.postprocess([category, attributes], 5)

    assert len(rows) == 5
    for i, row in enumerate(rows):
        top2 = np.argsort(-category[i], kind="stable")[:2]
        assert row["category"] == [{"label": "abcd"[j], "score": float(category[i, j])} for j in top2]
        kept = [j for j in np.argsort(-attributes[i], kind="stable") if attributes[i, j] >= np.float32(0.3)]
        assert row["attributes"] == [{"label": "xyz"[j], "score": float(attributes[i, j])} for j in kept]
    assert {"label": "y", "score": float(np.float32(0.3))} in rows[0]["attributes"]


def test_decoded_images_fill_their_rows_of_the_batch_in_message_order() -> None:
    from consumer.pipeline import BatchRows, ImageInput

    # Given four decoded images (message positions 0, 1, 3, 4; 2 was missing), arriving out of
    # order, one of them (3) failing to decode
    pixels = {i: np.full((2, 2, 3), i, np.uint8) for i in (0, 1, 3, 4)}
    images = [ImageInput(f"i{i}") for i in range(5)]
    rows = BatchRows([0, 1, 3, 4])
    for i in (4, 0, 1):
        images[i].array = rows.put(i, pixels[i])

    # When the batch is taken
    stacked = rows.stacked(images)

    # Then it holds the readable images in message order, and each image's array is its row
    assert stacked is not None and stacked.shape == (3, 2, 2, 3)
    assert [int(row[0, 0, 0]) for row in stacked] == [0, 1, 4]
    assert all(image.array is None or np.shares_memory(image.array, stacked) for image in images)
    # And images of another shape leave the stacking to the worker (which refuses them)
    odd = BatchRows([0, 1])
    odd.put(0, np.zeros((2, 2, 3), np.uint8))
    kept = odd.put(1, np.zeros((3, 3, 3), np.uint8))
    assert kept.shape == (3, 3, 3) and odd.stacked([ImageInput("a", kept), ImageInput("b", kept)]) is None
