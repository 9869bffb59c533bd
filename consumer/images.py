"""Decode one image's bytes into an RGB pixel array of the model's input size.

Every way an image can be bad ends here as an `ImageError` with a short reason, which becomes
that image's error row; nothing in this module lets a bad file take the batch down.

Choices a user would want to know about:
- EXIF orientation is applied, so a phone photo taken sideways is scored upright.
- Animated images are scored by their first frame.
- Alpha is dropped (as Keras' `load_img` does); palettes and grayscale become RGB;
  16-bit images are scaled to 8 bits (not clipped), CMYK is converted to RGB.
- Images over Pillow's pixel limit (`Image.MAX_IMAGE_PIXELS`, ~89 Mpx) are refused before their
  pixels are decoded: a small file can expand to gigabytes (a "decompression bomb").
- JPEGs are decoded at a reduced scale when the target is much smaller (`Image.draft`): the
  DCT does the first, cheap part of the downscale, which makes decoding several times faster.
  The final resize to exactly the target size (aspect ratio not kept, as Keras does) is bilinear.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from workpool.errors import ImageError

Pixels = npt.NDArray[np.uint8]

# Modes whose samples are wider than 8 bits: scaled down, never clipped.
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def decode_image(data: bytes, size: tuple[int, int] | None) -> Pixels:
    """`data` → uint8 array of shape (height, width, 3); `size` is (height, width) or None (keep)."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        # Pillow only warns between the limit and twice the limit: `_check_pixels` refuses those
        # too. (The CLI turns the warning into an error up front; `catch_warnings` here would
        # not be thread-safe.)
        opened = Image.open(io.BytesIO(data))
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
        wide = np.asarray(image).astype(np.int64)
        # 16-bit files open as "I;16" or, in older Pillow, "I": both span 0..65535.
        top = max(int(wide.max()), 65535)
        gray = (wide.clip(0).astype(np.float64) * (255.0 / top)).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids Pillow's warning on palette transparency
    return image.convert("RGB")
