"""Synthetic sample images for the demo and the benchmark (no data can be downloaded here).

Photo-like JPEGs (smooth colour gradients plus noise), so decode cost and file sizes are
realistic. Deterministic: the same count gives the same files, and existing files are reused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


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
