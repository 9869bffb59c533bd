"""Decode one image's bytes into an RGB pixel array of the model's input size.

Every way an image can be bad ends here as an `ImageError` with a short reason, which becomes
that image's error row; nothing in this module lets a bad file take the batch down.

Choices a user would want to know about:
- EXIF orientation is applied, so a phone photo taken sideways is scored upright.
- Animated images are scored by their first frame.
- Alpha is dropped (as Keras' `load_img` does); palettes and grayscale become RGB;
  16-bit images are scaled to 8 bits (not clipped), CMYK is converted to RGB.
- Only the accepted formats are opened (`ACCEPTED_FORMATS`: JPEG, PNG, BMP, GIF, WebP): Pillow's
  other parsers, EPS through Ghostscript among them, never see a message's bytes.
- Images over Pillow's pixel limit (`Image.MAX_IMAGE_PIXELS`, ~89 Mpx) are refused before their
  pixels are decoded: a small file can expand to gigabytes (a "decompression bomb"). So each
  decode thread holds at most one image of at most that many pixels at a time, and no step makes
  a wide copy of it: 16-bit images are scaled a block of rows at a time (their decode's arrays
  peak near 6 bytes a pixel, where whole-image 64-bit copies peaked at 24).
- JPEGs are decoded by libjpeg-turbo (`simplejpeg`, which releases the GIL) at the DCT scale
  just above the target size (n/8, up to 1/2; above that a full decode is as fast and sharper),
  then resized once with OpenCV's SIMD bilinear resize; a reduction of more than 1.2× goes through
  twice the target size and an exact 2× area step, which approximates the antialiased bilinear
  filter of Pillow (and so of Keras' `load_img`). The final size is exactly the target (aspect
  ratio not kept, as Keras does). EXIF orientation is read from the JPEG's APP1 segment and
  applied to the small decoded array. CMYK/YCCK JPEGs, an orientation tag this reader cannot
  interpret, and any JPEG libjpeg-turbo refuses take the Pillow path below, which gives the same
  pixels (within a few levels) or the error row.
- Every other format, and JPEGs when no size is asked for, go through Pillow: JPEGs at a reduced
  scale when the target is much smaller (`Image.draft`), then a bilinear resize to the target.
  `decode_with_pillow` is that path on its own (the reference the fast path is measured against).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from workpool.errors import ImageError

try:  # both are dependencies; without them (an odd platform) every image takes the Pillow path
    import cv2
    import simplejpeg

    # Resizes are small and run in the decode threads already: OpenCV's own pool would only
    # compete with them and with the model.
    cv2.setNumThreads(1)
    FAST_JPEG = True
except ImportError:  # pragma: no cover
    FAST_JPEG = False

Pixels = npt.NDArray[np.uint8]

# The formats Pillow may open: the image files the producer lists (.jpg .jpeg .png .bmp .gif
# .webp; a phone's multi-picture JPEG comes through the JPEG parser). Anything else (EPS, which
# Pillow hands to Ghostscript, PDF, TIFF, ICO, ...) is "not an image" without its parser running.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")
# Rows converted at a time from a 16/32-bit image: its float copy stays a few MB, not 4 bytes per pixel.
_WIDE_ROWS = 256

# Modes whose samples are wider than 8 bits: scaled down, never clipped.
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def decode_image(data: bytes, size: tuple[int, int] | None) -> Pixels:
    """`data` → uint8 array of shape (height, width, 3); `size` is (height, width) or None (keep)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    if FAST_JPEG and size is not None and data[:3] == _JPEG_START:
        pixels = _decode_jpeg_fast(data, size)
        if pixels is not None:
            return pixels
    return decode_with_pillow(data, size)


def decode_with_pillow(data: bytes, size: tuple[int, int] | None) -> Pixels:
    """Pillow's decode (`draft` for JPEGs), EXIF orientation, bilinear resize: every format."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        # Pillow only warns between the limit and twice the limit: `_check_pixels` refuses those
        # too. (The CLI turns the warning into an error up front; `catch_warnings` here would
        # not be thread-safe.)
        opened = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        _check_pixels(opened)
        if size is not None and opened.format == "JPEG":
            opened.draft("RGB", (size[1], size[0]))
        opened.load()
        image: Image.Image = ImageOps.exif_transpose(opened) or opened
        rgb = _to_rgb(image)
        if size is not None and rgb.size != (size[1], size[0]):
            rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"too many pixels (decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except OSError as exc:
        text = str(exc)
        if "truncated" in text:
            raise ImageError(f"truncated image: {text}") from None
        raise ImageError(f"corrupt image: {text}") from None
    except (SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        # Pillow's parsers raise these on malformed headers and chunks.
        raise ImageError(f"corrupt image: {type(exc).__name__}: {exc}") from None
    except MemoryError:
        raise ImageError("image too large to decode in memory") from None


def _check_pixels(image: Image.Image) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        raise ImageError(f"too many pixels: {width}x{height} is over the limit of {limit} (decompression bomb guard)")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _WIDE_MODES:
        wide = np.asarray(image)
        # 16-bit files open as "I;16" or, in older Pillow, "I": both span 0..65535.
        top = max(int(wide.max()), 65535)
        gray = np.empty(wide.shape, dtype=np.uint8)
        for start in range(0, wide.shape[0], _WIDE_ROWS):  # a block at a time: memory stays bounded
            block = wide[start : start + _WIDE_ROWS].astype(np.float64)
            gray[start : start + _WIDE_ROWS] = (block.clip(0) * (255.0 / top)).round()
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids Pillow's warning on palette transparency
    return image.convert("RGB")


# --- JPEGs: libjpeg-turbo's scaled decode, one OpenCV resize --------------------------------------

_JPEG_START = b"\xff\xd8\xff"
# DCT scales above 4/8 save little decode time and blur more than a resize does: decode fully.
_MAX_DCT_SCALE = 4
# A reduction up to this factor is one bilinear resize; above it, bilinear to twice the target and
# an exact 2× area step (OpenCV's bilinear alone does not widen its filter when reducing).
_PLAIN_BILINEAR_UP_TO = 1.2
# EXIF orientation → the numpy operation that shows the stored pixels upright (Pillow's table).
_ORIENT: dict[int, Callable[[Pixels], Pixels]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _decode_jpeg_fast(data: bytes, size: tuple[int, int]) -> Pixels | None:
    """The JPEG at `size` (height, width), or None where the Pillow path must decide."""
    orientation = jpeg_orientation(data)
    if orientation is None:
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if colorspace not in ("YCbCr", "Gray", "RGB") or (limit is not None and height * width > limit):
        return None
    # The target as stored: a sideways photo is scaled first, then turned.
    target_h, target_w = (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
    scale = dct_scale((height, width), (target_h, target_w))
    try:
        decoded: Pixels = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_height=-(-height * scale // 8),
            min_width=-(-width * scale // 8),
        )
    except (ValueError, MemoryError):
        return None
    pixels = resize_bilinear(decoded, (target_h, target_w))
    if orientation in _ORIENT:
        pixels = np.ascontiguousarray(_ORIENT[orientation](pixels))
    return pixels


def dct_scale(stored: tuple[int, int], target: tuple[int, int]) -> int:
    """n of the n/8 DCT scale to decode at: the smallest that is still ≥ the target (≤ 4), else 8."""
    (height, width), (target_h, target_w) = stored, target
    for n in range(1, _MAX_DCT_SCALE + 1):
        if -(-height * n // 8) >= target_h and -(-width * n // 8) >= target_w:
            return n
    return 8


def resize_bilinear(pixels: Pixels, size: tuple[int, int]) -> Pixels:
    """`pixels` resized to exactly `size` (height, width), bilinear, antialiased when reducing."""
    height, width = pixels.shape[:2]
    target_h, target_w = size
    if (height, width) == (target_h, target_w):
        return pixels
    # An integer box reduction first (OpenCV's fast area path), leaving under 1.5× per axis.
    fy, fx = max(height // target_h, 1), max(width // target_w, 1)
    if fy > 1 or fx > 1:
        pixels = _resize(pixels, (height // fy, width // fx), cv2.INTER_AREA)
        height, width = pixels.shape[:2]
    # Then bilinear; through twice the target along an axis that still shrinks by more than 1.2×.
    mid_h = 2 * target_h if height > _PLAIN_BILINEAR_UP_TO * target_h else target_h
    mid_w = 2 * target_w if width > _PLAIN_BILINEAR_UP_TO * target_w else target_w
    pixels = _resize(pixels, (mid_h, mid_w), cv2.INTER_LINEAR)
    if (mid_h, mid_w) != (target_h, target_w):
        pixels = _resize(pixels, (target_h, target_w), cv2.INTER_AREA)
    return pixels


def _resize(pixels: Pixels, size: tuple[int, int], interpolation: int) -> Pixels:
    return np.asarray(cv2.resize(pixels, (size[1], size[0]), interpolation=interpolation), dtype=np.uint8)


def jpeg_orientation(data: bytes) -> int | None:
    """The EXIF orientation of a JPEG (1 when it has none), or None when Pillow must read it.

    Walks the marker segments before the image data: the first APP1 `Exif` segment's first IFD
    holds tag 0x0112. An orientation only in XMP metadata (which Pillow also reads), or an EXIF
    block this reader does not follow, gives None.
    """
    pos, end = 2, len(data)
    exif: int | None = 0  # 0: no EXIF segment seen yet
    in_xmp = False
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no more metadata
            if exif is None or exif > 1:
                return exif
            return None if in_xmp else 1  # Pillow reads XMP's orientation when EXIF has none
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and exif == 0:
            exif = _exif_orientation(segment[6:])
        elif marker == 0xE1 and b"tiff:Orientation" in segment:
            in_xmp = True
        pos += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int | None:
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            tag, kind, n = struct.unpack_from(order + "HHI", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112:
                if kind != 3 or n != 1:  # not one SHORT: let Pillow interpret it
                    return None
                (value,) = struct.unpack_from(order + "H", tiff, ifd + 2 + 12 * i + 8)
                return max(int(value), 1)
    except (KeyError, struct.error):
        return None
    return 1
