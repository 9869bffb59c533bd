"""Decode + resize to the model's input, per core: the consumer's JPEG path ÷ Pillow + draft + resize.

    python -m bench.decode [--seconds 2] [--rounds 5] [--size 299]

Both paths run on one thread, on the same files, alternating pass by pass (so a neighbour's load
on a shared machine hits both alike); each round's ratio is new ÷ Pillow, and the median over
the rounds is printed. Two sets of real photos (scikit-image's sample photos, crops and mirror images
of them): "seed-like", re-encoded at 800×800 (~125 KB, the seed dataset's average file), and
"small", at their own sizes (451×300 to 640×480, ~50 KB). Also printed: how far the new pixels
are from Pillow's (mean absolute difference, 0..255 levels).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import CACHE, rate_line, ratio_line
from consumer.images import decode_image, decode_with_pillow
from orchestration.tools.samples import write_photos

SEED_LIKE = (800, 800)
PHOTOS_PER_SET = 20
GOAL = "≥ 1.5 on the seed-like set"


def photo_sets(count: int = PHOTOS_PER_SET) -> dict[str, Path]:
    """The two sets of JPEGs, cached between runs."""
    seed = CACHE / f"photos-{SEED_LIKE[0]}x{SEED_LIKE[1]}-{count}"
    small = CACHE / f"photos-own-size-{count}"
    write_photos(seed, count, SEED_LIKE, quality=90)
    write_photos(small, count)
    return {"seed-like 800x800": seed, "small": small}


Decode = Callable[[bytes, tuple[int, int]], object]


def side_by_side(new: Decode, old: Decode, blobs: list[bytes], size: tuple[int, int], s: float) -> tuple[float, float]:
    """(new, old) images/s on one thread, alternating one pass over `blobs` each for about `s` s.

    Alternating pass by pass means a burst of load from a neighbour slows both paths alike.
    """
    spent = {new: 0.0, old: 0.0}
    done = 0
    while spent[new] + spent[old] < s:
        for decode in (old, new):
            started = time.perf_counter()
            for data in blobs:
                decode(data, size)
            spent[decode] += time.perf_counter() - started
        done += len(blobs)
    return done / spent[new], done / spent[old]


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per round (both paths)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median ratio printed)")
    parser.add_argument("--size", type=int, default=299, help="square target size (299: InceptionV3)")
    args = parser.parse_args(argv)
    size = (args.size, args.size)
    lines: list[str] = []
    for name, folder in photo_sets().items():
        files = sorted(folder.glob("*.jpg"))
        blobs = [p.read_bytes() for p in files]
        kb = sum(len(b) for b in blobs) / len(blobs) / 1000
        diff = np.mean(
            [np.abs(decode_image(b, size).astype(np.int16) - decode_with_pillow(b, size)).mean() for b in blobs]
        )
        ratios, new_rates, old_rates = [], [], []
        for _ in range(args.rounds):
            new, old = side_by_side(decode_image, decode_with_pillow, blobs, size, args.seconds)
            ratios.append(new / old)
            new_rates.append(new)
            old_rates.append(old)
        print(
            f"{name}: {len(blobs)} JPEGs, mean {kb:.0f} KB, to {size[0]}x{size[1]}; "
            f"Pillow+draft {statistics.median(old_rates):.0f} images/s per core, "
            f"new {statistics.median(new_rates):.0f}; ratio per round "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f"; mean |new - Pillow| {diff:.2f} levels",
            flush=True,
        )
        key = "seed_like" if name.startswith("seed") else "small"
        lines.append(rate_line(f"decode_{key}_new_per_core", statistics.median(new_rates), "images/s"))
        lines.append(rate_line(f"decode_{key}_pillow_per_core", statistics.median(old_rates), "images/s"))
        lines.append(
            ratio_line(f"decode_{key}_new_over_pillow", statistics.median(ratios), GOAL if key == "seed_like" else "")
        )
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    main()
