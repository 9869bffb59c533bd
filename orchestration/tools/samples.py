"""Sample images for the demo, the benchmarks and the tests (nothing is downloaded).

- `write_samples`: synthetic photo-like JPEGs (smooth colour gradients plus noise), so decode
  cost and file sizes are realistic, in any number and size.
- `write_photos`: real photos, the colour sample photos shipped inside scikit-image
  (`skimage.data`: an astronaut, a cup of coffee, a cat, a rocket, a motorcycle), and as many
  more as asked made from them by crops and mirror images, optionally re-encoded at one size.
  Their ImageNet classes are known (`PHOTO_CLASSES`), so a pretrained model's labels can be checked.

Deterministic: the same arguments give the same files, and existing files are reused.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from workpool.errors import UsageError

# The photos (skimage.data function names → file stem) and the ImageNet classes a good
# classifier may give each as its top-1 (EfficientNet-Lite0's own answers are among them).
PHOTOS = {
    "astronaut": "astronaut",
    "coffee": "coffee",
    "chelsea": "cat",
    "rocket": "rocket",
    "motorcycle": "motorcycle",
}
PHOTO_CLASSES: dict[str, frozenset[str]] = {
    "coffee": frozenset({"espresso", "cup", "coffee mug", "eggnog"}),
    "cat": frozenset({"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}),
    "motorcycle": frozenset({"moped", "motor scooter", "crash helmet", "disk brake"}),
}


def write_samples(folder: Path, count: int, size: tuple[int, int] = (500, 375)) -> list[str]:
    """Ensure `folder` holds `sample_00000.jpg` … for `count` images; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        name = f"sample_{i:05d}.jpg"
        names.append(name)
        path = folder / name
        if path.exists():
            continue
        phase = i * 0.37
        pixels = np.stack(
            [
                128 + 100 * np.sin(x / (15 + i % 11) + phase),
                128 + 100 * np.cos(y / (21 + i % 7) - phase),
                128 + 100 * np.sin((x + y) / (29 + i % 5)),
            ],
            axis=-1,
        )
        pixels += rng.normal(0, 10, size=pixels.shape)
        tmp = path.with_name(f".{name}.tmp")
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(tmp, format="JPEG", quality=88)
        tmp.replace(path)
    return names


def photo(name: str) -> npt.NDArray[np.uint8]:
    """One of the `PHOTOS` (by its file stem) as an RGB array."""
    try:
        from skimage import data
    except ImportError:
        raise UsageError("the sample photos need scikit-image: pip install -e '.[dev]'") from None
    by_stem = {stem: fn for fn, stem in PHOTOS.items()}
    if name not in by_stem:
        raise UsageError(f"no sample photo {name!r}; expected one of {', '.join(by_stem)}")
    fn = by_stem[name]
    load: Callable[[], Any] = getattr(data, fn) if fn != "motorcycle" else data.stereo_motorcycle
    pixels = load()[0] if fn == "motorcycle" else load()
    return np.ascontiguousarray(pixels[..., :3], dtype=np.uint8)


def photo_variant(pixels: npt.NDArray[np.uint8], variant: int) -> npt.NDArray[np.uint8]:
    """Variant 0 is the photo; 1, 2, … alternate mirror images and centred crops down to ~60%."""
    keep = 1.0 - 0.04 * (variant // 2)
    height, width = pixels.shape[:2]
    h, w = max(int(height * keep), 1), max(int(width * keep), 1)
    top, left = (height - h) // 2, (width - w) // 2
    out = pixels[top : top + h, left : left + w]
    return np.ascontiguousarray(out[:, ::-1] if variant % 2 else out)


def write_photos(
    folder: Path, count: int | None = None, size: tuple[int, int] | None = None, *, quality: int = 90
) -> list[str]:
    """Ensure `folder` holds `count` real-photo JPEGs (default: each photo once); returns their names.

    Names are `<photo>_<variant>.jpg` (`cat_00.jpg` is the cat photo itself), so the expected
    class can be read off a name. `size` (width, height) re-encodes every photo at that size.
    """
    stems = list(PHOTOS.values())
    count = len(stems) if count is None else count
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        stem, variant = stems[i % len(stems)], i // len(stems)
        name = f"{stem}_{variant:02d}.jpg"
        names.append(name)
        path = folder / name
        if path.exists():
            continue
        image = Image.fromarray(photo_variant(photo(stem), variant))
        if size is not None:
            image = image.resize(size, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)
    return sorted(names)


def photo_stem(name: str) -> str:
    """`cat_03.jpg` → `cat`."""
    return Path(name).stem.rsplit("_", 1)[0]
