"""Images for tests, demos and benchmarks: sample JPEGs and a corpus of awkward and broken files.

    write_sample_images(folder, 10, (800, 600))      → ["img_00000.jpg", ...]
    write_bad_image_corpus(folder)                    → {"zero_bytes.jpg": "error", "cmyk.jpg": "ok", ...}
    solid_color_image(folder, "red.png", (255, 0, 0)) → a file of one known colour

The corpus maps each name to the status a consumer must give it. One name in it, `MISSING_IMAGE`,
is deliberately not written: list it in a batch to test a missing blob or file. Every file is
generated here (no binary fixtures in the repository) and deterministic for a given seed.
`stage_folder(settings, folder)` puts a folder where a consumer on that backend reads it
(the folder itself, or a blob container on Azure/Azurite) and returns its source URI.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from workpool.settings import Settings

MISSING_IMAGE = "missing.jpg"


def sample_image(size: tuple[int, int] = (500, 375), seed: int = 0) -> Image.Image:
    """A photo-like RGB image (smooth gradients plus noise, so JPEG sizes are realistic)."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / (17 + seed % 13)),
            128 + 100 * np.cos(y / (23 + seed % 7)),
            128 + 100 * np.sin((x + y) / 31),
        ],
        axis=-1,
    )
    noisy = base + rng.normal(0, 12, size=base.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_sample_images(
    folder: Path, n: int, size: tuple[int, int] = (500, 375), *, prefix: str = "img_", seed: int = 0
) -> list[str]:
    """Write `n` distinct JPEGs of `size` (width, height); returns their names, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    # Rendering a fresh image per file is slow for big n; a few bases, shifted, stay distinct.
    bases = [sample_image(size, seed + i) for i in range(min(n, 8))]
    names = []
    for i in range(n):
        image = bases[i % len(bases)]
        if i >= len(bases):
            image = Image.fromarray(np.roll(np.asarray(image), shift=7 * i, axis=1))
        name = f"{prefix}{i:05d}.jpg"
        (folder / name).write_bytes(jpeg_bytes(image))
        names.append(name)
    return names


def solid_color_image(folder: Path, name: str, rgb: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> str:
    """A lossless (PNG) image of one colour: its per-channel means are exactly `rgb`."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(folder / name, format="PNG")
    return name


def write_bad_image_corpus(folder: Path) -> dict[str, str]:
    """Write the corpus; returns {name: expected status ("ok" or "error")}, `MISSING_IMAGE` included."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = sample_image((320, 240), seed=42)
    good_jpeg = jpeg_bytes(photo)
    expected: dict[str, str] = {}

    def put(name: str, data: bytes, status: str) -> None:
        (folder / name).write_bytes(data)
        expected[name] = status

    def saved(image: Image.Image, fmt: str, **options: object) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    # --- broken: each must become an error row with a reason --------------------------
    put("zero_bytes.jpg", b"", "error")
    put("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "error")
    # A JPEG start-of-image marker followed by garbage: looks like a JPEG, cannot be parsed.
    rng = np.random.default_rng(7)
    put("corrupt.jpg", good_jpeg[:2] + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "error")
    put("text_named.jpg", b"this is a text file, not a picture\n" * 20, "error")
    put("bomb.png", decompression_bomb_png(), "error")

    # --- awkward but valid: each must be scored ----------------------------------------
    put("cmyk.jpg", saved(photo.convert("CMYK"), "JPEG", quality=90), "ok")
    sixteen = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    put("gray16.png", saved(Image.fromarray(sixteen), "PNG"), "ok")
    put("paletted.png", saved(photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"), "ok")
    put("grayscale.jpg", saved(photo.convert("L"), "JPEG", quality=90), "ok")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    put("rgba.png", saved(rgba, "PNG"), "ok")
    frames = [photo, photo.rotate(90), photo.rotate(180)]
    put("animated.gif", saved(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    put("exif_rotated.jpg", saved(photo, "JPEG", quality=90, exif=exif.tobytes()), "ok")

    expected[MISSING_IMAGE] = "error"  # named in batches, never written
    return expected


def decompression_bomb_png(width: int = 10_000, height: int = 10_000) -> bytes:
    """A valid 1-bit PNG of width×height (100 Mpx > Pillow's ~89 Mpx limit) in about 20 KB."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte + packed bits
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def stage_folder(settings: Settings, folder: Path, container: str | None = None) -> str:
    """Where a consumer should read `folder` from on the settings' backend; returns the URI.

    Embedded: the folder itself. Azure (Azurite): every file uploaded to `container` (default:
    `<queue>-src`) under the folder's name, returned as `az://<container>/<folder name>`.
    """
    if not settings.uses_azure_storage:
        return str(folder)
    from workpool.storage import open_location

    uri = f"az://{container or settings.queue + '-src'}/{folder.name}"
    store, prefix = open_location(settings, uri)
    store.ensure()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            store.write(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())
    return uri
