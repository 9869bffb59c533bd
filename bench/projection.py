"""Projection (not a measurement): the old recipe's table, and the seed run on today's GPU nodes.

    T(N) = images ÷ min(N · node, S) + L        (L only when N > 1)
    node = min(R · e, P, c · D)

- R: the model's own images/s on one node's accelerator (`--gpu`: a P100 running InceptionV3,
  ~400 images/s, the old recipe's; an A100 in mixed precision ~2,400 (published 2,000–2,800);
  an H100 ~4,250 (3,500–5,000); or `--node-images-per-s`);
- e: measured here, the consumer's end-to-end images/s ÷ the model's images/s on decoded tensors
  (`bench.pipeline`): what the framework costs per image when the model is the bottleneck;
- P: measured here, what one consumer process can carry at all with a near-free model
  (`bench.ceiling`'s 8×8 figure: everything but decode), and one process per GPU;
- c · D: decode capacity of a node: its vCPUs per GPU (6 on the old NC6s_v2, 24 on NC A100 v4,
  40 on NC H100 v5) times the consumer decoder's measured images/s per core on seed-like photos
  (800×800, ~125 KB; measured by this command);
- S: the storage account's ceiling, ~20,000 requests/s for a standard account, over the requests
  each image costs: one GET for the image plus, per batch of B, ~4 more (receive, delete, the
  results object, the timing record): S = accounts × 20,000 ÷ (1 + 4/B);
- L: measured here, the pool's fixed cost per run at 16 nodes, T16 − T1/16 from the scaling
  benchmark (idle nodes noticing new work within their poll interval, the last batches' tail).

Left out, as in the drain wall time: provisioning nodes and loading the model (before the first
dequeue; the consumer warms its model before its first lease, `bench.warm_start`).

    python -m bench.projection [--gpu p100|a100|h100] [--node-images-per-s R] [--accounts K]
        [--pipeline-efficiency E] [--process-images-per-s P] [--fixed-loss-s L]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass

from bench.common import CACHE, ratio_line

IMAGES = 100_000
SEED_IMAGES = 366_111
NODES = (1, 8, 16, 32)
# The old recipe's table (cloth_inference, 100k images), minutes.
OLD_RECIPE_MIN: dict[str, dict[int, float]] = {
    "K80": {1: 741, 8: 99, 16: 49, 32: 25},
    "P100": {1: 255, 8: 32, 16: 19, 32: 10},
}
RESULTS = CACHE / "last-results.json"

# InceptionV3 model-only images/s per GPU (published figures, compiled for this project) and the
# vCPUs Azure gives each GPU on the matching node size.
GPUS: dict[str, tuple[float, int, str]] = {
    "p100": (400.0, 6, "P100 (NC6s_v2, retired), float32"),
    "a100": (2_400.0, 24, "A100 (NC24ads_A100_v4), mixed precision"),
    "h100": (4_250.0, 40, "H100 (NC40ads_H100_v5), mixed precision"),
}
ACCOUNT_REQUESTS_PER_S = 20_000.0
REQUESTS_PER_BATCH = 4  # receive, delete, results object, timing record (renewals are rarer)
BATCH_SIZE = 64
# One consumer process's ceiling before bench.ceiling has measured it: ~0.9 ms of Python per image.
DEFAULT_PROCESS_IMAGES_PER_S = 1_000.0


def storage_images_per_s(accounts: int = 1, batch_size: int = BATCH_SIZE) -> float:
    """Images/s a pool can move through `accounts` storage accounts at ~20,000 requests/s each."""
    return accounts * ACCOUNT_REQUESTS_PER_S / (1 + REQUESTS_PER_BATCH / batch_size)


@dataclass(frozen=True)
class Projection:
    node_images_per_s: float
    pipeline_efficiency: float
    fixed_loss_s: float
    process_images_per_s: float = math.inf  # P: one consumer process per GPU
    node_decode_images_per_s: float = math.inf  # c · D
    storage_images_per_s: float = math.inf  # S, for the whole pool

    @property
    def node_rate(self) -> float:
        """What one node delivers end to end: the slowest of model, process and decode."""
        return min(self.node_images_per_s * self.pipeline_efficiency, self.process_images_per_s,
                   self.node_decode_images_per_s)  # fmt: skip

    def limit(self, nodes: int) -> str:
        """Which term bounds a pool of `nodes` nodes."""
        if nodes * self.node_rate > self.storage_images_per_s:
            return "storage"
        rates = {
            "model": self.node_images_per_s * self.pipeline_efficiency,
            "process": self.process_images_per_s,
            "decode": self.node_decode_images_per_s,
        }
        return min(rates, key=lambda k: rates[k])

    def minutes(self, nodes: int, images: int = IMAGES) -> float:
        seconds = images / min(nodes * self.node_rate, self.storage_images_per_s)
        if nodes > 1:
            seconds += self.fixed_loss_s
        return seconds / 60


def old_recipe_images_per_s(gpu: str) -> float:
    """The old recipe's per-node rate, from its 1-node figure."""
    return IMAGES / (OLD_RECIPE_MIN[gpu][1] * 60)


def decode_images_per_s_per_core(size: int = 299) -> float:
    """The consumer's decoder on seed-like photos (800×800, ~125 KB) to `size`², one thread."""
    from bench.decode import photo_sets
    from consumer.images import decode_image

    folder = next(path for name, path in photo_sets().items() if name.startswith("seed"))
    blobs = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    for data in blobs[:3]:
        decode_image(data, (size, size))  # warm the libraries' first-call costs
    started = time.perf_counter()
    rounds = 0
    while time.perf_counter() - started < 2.0:
        for data in blobs:
            decode_image(data, (size, size))
        rounds += 1
    return rounds * len(blobs) / (time.perf_counter() - started)


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
        "  " + "bound by".ljust(width) + "".join(f"{projection.limit(n):>9s}" for n in NODES),
    ]
    return lines


def render_seed(projections: dict[str, Projection], accounts: int) -> list[str]:
    """The seed run (366,111 images) at 32 nodes of each GPU: rate, time, what bounds it."""
    lines = [f"PROJECTION (not a measurement): the seed's {SEED_IMAGES:,} images on 32 nodes, {accounts} account(s)"]
    for name, p in projections.items():
        rate = min(32 * p.node_rate, p.storage_images_per_s)
        need = math.ceil(32 * p.node_rate / storage_images_per_s(1))
        lines.append(
            f"  {GPUS[name][2]:<42s} node {p.node_rate:>6,.0f} images/s, pool {rate:>7,.0f} images/s, "
            f"{p.minutes(32, SEED_IMAGES) * 60:>5.0f} s, bound by {p.limit(32)}; "
            f"{need} account(s) keep storage out of the way"
        )
    return lines


def main(argv: list[str] | None = None, measured: dict[str, float] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", choices=sorted(GPUS), default="p100", help="the node of the first table")
    parser.add_argument("--node-images-per-s", type=float, default=None, help="model images/s of one node")
    parser.add_argument("--pipeline-efficiency", type=float, default=None)
    parser.add_argument("--process-images-per-s", type=float, default=None, help="one consumer process's ceiling")
    parser.add_argument("--fixed-loss-s", type=float, default=None)
    parser.add_argument("--accounts", type=int, default=1, help="storage accounts the images are spread over")
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
    process = args.process_images_per_s or known.get("process_images_per_s")
    if process is None:
        process = DEFAULT_PROCESS_IMAGES_PER_S
        notes.append(f"one process's ceiling not measured yet: {process:,.0f} images/s assumed (bench.ceiling)")
    per_core = decode_images_per_s_per_core()
    storage = storage_images_per_s(args.accounts)

    def projection_for(gpu: str, rate: float | None = None) -> Projection:
        model_rate, cores, _ = GPUS[gpu]
        return Projection(rate or model_rate, efficiency, loss, process, cores * per_core, storage)

    projection = projection_for(args.gpu, args.node_images_per_s)
    print("Projection of the old recipe's table", flush=True)
    for note in notes:
        print(f"  ({note}; run `python -m bench` to measure it)")
    print("\n".join(render(projection)))
    old_rate = old_recipe_images_per_s("P100")
    print(f"  the old recipe's P100 node scored {old_rate:.1f} images/s end to end (255 min for 100k)")
    print(
        f"  decode here: {per_core:.0f} images/s per core (seed-like 800×800 → 299×299, the consumer's decoder); "
        f"one consumer process carries at most {process:,.0f} images/s; storage: {storage:,.0f} images/s "
        f"over {args.accounts} account(s) (20,000 requests/s each, 1 + {REQUESTS_PER_BATCH}/{BATCH_SIZE} per image)"
    )
    print("\n".join(render_seed({gpu: projection_for(gpu) for gpu in GPUS}, args.accounts)))
    if "node_images_per_s_here" in known:
        here = Projection(known["node_images_per_s_here"], efficiency, loss)
        print(
            f"  this machine's CPU node ({here.node_images_per_s:.1f} model images/s): "
            + ", ".join(f"{n} node(s) {here.minutes(n):.0f} min" for n in NODES)
        )
    line = ratio_line(
        f"projected speedup over the old recipe, 32 P100 nodes (old {OLD_RECIPE_MIN['P100'][32]:.0f} min ÷ projected)",
        OLD_RECIPE_MIN["P100"][32] / projection_for("p100").minutes(32),
    )
    print(line, flush=True)
    return [line]


if __name__ == "__main__":
    main()
