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
    from consumer.cli import flags_for_child

    flags = {"idle_exit_s": 5.0, "max_attempts": None, "xla": False, "allow_unsafe_models": True, "precision": "mixed"}
    assert flags_for_child(flags) == ["--idle-exit-s=5.0", "--no-xla", "--allow-unsafe-models", "--precision=mixed"]
