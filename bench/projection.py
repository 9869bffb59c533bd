"""Projection (not a measurement): the old recipe's 100k-image table for a node of a given speed.

    T(N) = images ÷ (N · R · e_pipeline) + L        (L only when N > 1)

- R: the model's own images/s on one node's accelerator (default a P100 running InceptionV3,
  ~400 images/s; `--node-images-per-s`);
- e_pipeline: measured here, the consumer's end-to-end images/s ÷ the model's images/s on
  decoded tensors (`bench.pipeline_efficiency`): what the framework costs per image;
- L: measured here, the pool's fixed cost per run at 16 nodes, T16 − T1/16 from the scaling
  benchmark (idle nodes noticing new work within their poll interval, the last batches' tail).

Left out, as in the drain wall time: provisioning nodes and loading the model (before the first
dequeue). Assumed: decode keeps up (checked below against this machine's measured decode rate
per core), and storage keeps up (an Azure Storage account serves ~20,000 requests/s, a queue
~2,000 messages/s; 32 P100 nodes at batch 64 need ~200 queue operations/s and ~12,800 blob
reads/s, so the images should sit in more than one account beyond that).

    python -m bench.projection [--node-images-per-s 400] [--pipeline-efficiency E] [--fixed-loss-s L]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

from bench.common import CACHE, ratio_line, samples

IMAGES = 100_000
NODES = (1, 8, 16, 32)
# The old recipe's table (cloth_inference, 100k images), minutes.
OLD_RECIPE_MIN: dict[str, dict[int, float]] = {
    "K80": {1: 741, 8: 99, 16: 49, 32: 25},
    "P100": {1: 255, 8: 32, 16: 19, 32: 10},
}
RESULTS = CACHE / "last-results.json"


@dataclass(frozen=True)
class Projection:
    node_images_per_s: float
    pipeline_efficiency: float
    fixed_loss_s: float

    def minutes(self, nodes: int, images: int = IMAGES) -> float:
        seconds = images / (nodes * self.node_images_per_s * self.pipeline_efficiency)
        if nodes > 1:
            seconds += self.fixed_loss_s
        return seconds / 60


def old_recipe_images_per_s(gpu: str) -> float:
    """The old recipe's per-node rate, from its 1-node figure."""
    return IMAGES / (OLD_RECIPE_MIN[gpu][1] * 60)


def decode_images_per_s_per_core(count: int = 40) -> float:
    """This machine's decode + resize rate for 800×600 JPEGs to 299×299, one thread."""
    from consumer.images import decode_image

    folder = samples(count, (800, 600))
    blobs = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    started = time.perf_counter()
    for data in blobs:
        decode_image(data, (299, 299))
    return len(blobs) / (time.perf_counter() - started)


def save_measured(values: dict[str, float]) -> None:
    """Benchmarks leave their measured inputs for a later standalone projection run."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({**known, **values}, indent=2))


def load_measured() -> dict[str, float]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def render(projection: Projection, gpu: str = "P100") -> list[str]:
    old = OLD_RECIPE_MIN[gpu]
    width = 36
    lines = [
        f"PROJECTION (not a measurement): {IMAGES:,} images, "
        f"node of {projection.node_images_per_s:.0f} model images/s, "
        f"pipeline efficiency {projection.pipeline_efficiency:.3f}, fixed loss {projection.fixed_loss_s:.2f} s per run",
        "  " + "nodes".ljust(width) + "".join(f"{n:>9d}" for n in NODES),
        "  " + f"old recipe, {gpu}, measured (min)".ljust(width) + "".join(f"{old[n]:>9.0f}" for n in NODES),
        "  " + "workpool, projected (min)".ljust(width) + "".join(f"{projection.minutes(n):>9.2f}" for n in NODES),
        "  " + "workpool, projected (s)".ljust(width) + "".join(f"{projection.minutes(n) * 60:>9.0f}" for n in NODES),
        "  " + "old ÷ projected".ljust(width) + "".join(f"{old[n] / projection.minutes(n):>8.0f}×" for n in NODES),
    ]
    return lines


def main(argv: list[str] | None = None, measured: dict[str, float] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node-images-per-s", type=float, default=400.0, help="model images/s of one node (P100)")
    parser.add_argument("--pipeline-efficiency", type=float, default=None)
    parser.add_argument("--fixed-loss-s", type=float, default=None)
    args = parser.parse_args(argv)
    known = {**load_measured(), **(measured or {})}
    notes = []
    efficiency = args.pipeline_efficiency or known.get("pipeline_efficiency")
    if efficiency is None:
        efficiency = 1.0
        notes.append("pipeline efficiency not measured yet: 1.0 assumed")
    loss = args.fixed_loss_s if args.fixed_loss_s is not None else known.get("fixed_loss_s")
    if loss is None:
        loss = 0.5
        notes.append("fixed loss not measured yet: 0.5 s assumed")
    projection = Projection(args.node_images_per_s, efficiency, loss)
    print("Projection of the old recipe's table", flush=True)
    for note in notes:
        print(f"  ({note}; run `python -m bench` to measure it)")
    print("\n".join(render(projection)))
    old_rate = old_recipe_images_per_s("P100")
    print(f"  the old recipe's P100 node scored {old_rate:.1f} images/s end to end (255 min for 100k)")
    per_core = decode_images_per_s_per_core()
    cores = projection.node_images_per_s / per_core
    print(
        f"  decode here: {per_core:.0f} images/s per core (800×600 → 299×299), so a {projection.node_images_per_s:.0f} "
        f"images/s node needs ~{cores:.1f} cores of decode (an NC6s_v2 P100 node has 6; --decode-threads 0 uses all)"
    )
    if "node_images_per_s_here" in known:
        here = Projection(known["node_images_per_s_here"], efficiency, loss)
        print(
            f"  this machine's CPU node ({here.node_images_per_s:.1f} model images/s): "
            + ", ".join(f"{n} node(s) {here.minutes(n):.0f} min" for n in NODES)
        )
    line = ratio_line(
        f"projected speedup over the old recipe, 32 P100 nodes (old {OLD_RECIPE_MIN['P100'][32]:.0f} min ÷ projected)",
        OLD_RECIPE_MIN["P100"][32] / projection.minutes(32),
    )
    print(line, flush=True)
    return [line]


if __name__ == "__main__":
    main()
