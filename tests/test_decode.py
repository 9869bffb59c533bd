"""The fast JPEG path (libjpeg-turbo scaled decode + one OpenCV resize) against the Pillow reference.

The fast path must give the same picture as `decode_with_pillow` within a few levels on real
photos at every size (upscaling, small and large reductions, the seed's 800×800), turn EXIF
orientations the same way, and leave to Pillow what it does not handle (CMYK, XMP orientation,
broken files), with Pillow's error rows. No mocks: real JPEGs, encoded here.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from consumer.images import FAST_JPEG, _decode_jpeg_fast, dct_scale, decode_image, decode_with_pillow, jpeg_orientation
from orchestration.tools.samples import photo, photo_variant
from tests.support.images import jpeg_bytes, sample_image
from workpool.errors import ImageError

# Mean absolute difference allowed between the fast path and Pillow+draft (0..255 levels): both
# are bilinear; the DCT scales differ (n/8 against 1/2, 1/4, 1/8), which costs about 1-3 levels.
CLOSE = 3.5


def encoded(pixels: npt.NDArray[np.uint8] | Image.Image, **options: object) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def mad(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("stored", [(800, 800), (640, 427), (451, 300), (2000, 1500), (120, 90)])
@pytest.mark.parametrize("target", [(299, 299), (224, 224), (32, 32)])
def test_the_fast_path_gives_pillows_picture(stored: tuple[int, int], target: tuple[int, int]) -> None:
    data = encoded(Image.fromarray(photo("cat")).resize(stored, Image.Resampling.BICUBIC))
    fast, reference = decode_image(data, target), decode_with_pillow(data, target)
    assert fast.shape == (*target, 3) and fast.dtype == np.uint8 and fast.flags.c_contiguous
    assert mad(fast, reference) < CLOSE


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_as_pillow_turns_it(orientation: int) -> None:
    # Given a photo (not symmetric) stored with one of the eight EXIF orientations
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(photo_variant(photo("rocket"), 0), exif=exif.tobytes())
    assert jpeg_orientation(data) == orientation
    # When it is decoded to a portrait size, then it matches Pillow's upright picture
    fast, reference = decode_image(data, (200, 150)), decode_with_pillow(data, (200, 150))
    assert fast.shape == reference.shape == (200, 150, 3)
    assert mad(fast, reference) < CLOSE
    # and no other of the eight ways to turn it comes as close (the test can tell them apart)
    others = [np.rot90(fast, k) for k in (1, 2, 3)] + [fast[:, ::-1], fast[::-1]]
    assert all(o.shape != reference.shape or mad(o, reference) > 4 * CLOSE for o in others)


def test_baseline_grayscale_and_progressive_jpegs_take_the_fast_path_with_the_same_picture() -> None:
    assert FAST_JPEG  # simplejpeg and OpenCV are dependencies: without them every JPEG is slow
    baseline = encoded(photo("coffee"))
    gray = encoded(Image.fromarray(photo("coffee")).convert("L"))
    progressive = encoded(photo("coffee"), progressive=True)
    for data in (baseline, gray, progressive):
        assert _decode_jpeg_fast(data, (224, 224)) is not None  # not handed to Pillow
        fast, reference = decode_image(data, (224, 224)), decode_with_pillow(data, (224, 224))
        assert fast.shape == (224, 224, 3) and mad(fast, reference) < CLOSE
    gray_pixels = decode_image(gray, (224, 224))
    assert (gray_pixels[..., 0] == gray_pixels[..., 1]).all()


def test_what_the_fast_path_cannot_read_is_pillows_exactly() -> None:
    # CMYK (Adobe's inverted convention, which Pillow knows) and an orientation only in XMP
    cmyk = encoded(Image.fromarray(photo("coffee")).convert("CMYK"))
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><tiff:Orientation>6</tiff:Orientation></x:xmpmeta>'
    with_xmp = encoded(photo("coffee"), xmp=xmp)
    assert jpeg_orientation(with_xmp) is None
    for data in (cmyk, with_xmp):
        np.testing.assert_array_equal(decode_image(data, (224, 224)), decode_with_pillow(data, (224, 224)))
    assert decode_image(with_xmp, (224, 224)).shape == (224, 224, 3)


def test_broken_jpegs_get_pillows_error_rows() -> None:
    good = jpeg_bytes(sample_image((320, 240)))
    rng = np.random.default_rng(7)
    broken = {
        "truncated": good[: len(good) // 2],
        "garbage after the start marker": good[:3] + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "a cut header": good[:40],
    }
    for what, data in broken.items():
        with pytest.raises(ImageError) as fast:
            decode_image(data, (224, 224))
        with pytest.raises(ImageError) as reference:
            decode_with_pillow(data, (224, 224))
        assert str(fast.value) == str(reference.value), what


def test_the_dct_scale_is_the_smallest_at_or_above_the_target() -> None:
    assert dct_scale((800, 800), (299, 299)) == 3  # 300×300, then 300 → 299
    assert dct_scale((800, 800), (224, 224)) == 3
    assert dct_scale((4032, 3024), (299, 299)) == 1  # 504×378
    assert dct_scale((1000, 1000), (299, 299)) == 3
    # above 1/2 the full decode is as fast and sharper
    assert dct_scale((500, 375), (299, 299)) == 8
    assert dct_scale((120, 90), (299, 299)) == 8
