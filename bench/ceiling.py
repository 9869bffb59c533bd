"""The consumer's ceiling: how fast one consumer process goes when the model costs nothing.

    .venv/bin/python -m bench.ceiling [--images 640] [--tiny-images 8192] [--batch-size 64] [--threads 0]

A near-free model (every 16th pixel, global average pooling and one dense layer to 1,000 softmax
classes, so post-processing, labels and result rows are those of a real ImageNet classifier)
leaves everything else the consumer does: receive, manifest check, fetch, decode + resize, stacking,
the model call with its on-device scaling, top-5, result rows, write, ack, timing record. Three
sets, each measured side by side in one run, in rounds (decoders, consumer, decoders again) so a
drift in the machine's load cancels:

1. real photos as shipped (scikit-image's sample photos, mirror images and crops of them down to
   ~60 %, 290–740 px wide, ~47 KB; `bench.common.photos`),
   model input 299×299: the consumer's steady images/s ÷ the raw decode rate of the same files
   (bytes already in memory) by the consumer's decoder (`decode_image`) on the same number of
   threads (goal ≥ 0.85), and ÷ Pillow with `draft` on those threads;
2. the same photos re-encoded at 800×800 (~110 KB, like the seed's ~125 KB images): the same
   ratios (goal for ÷ Pillow+draft: ≥ 1.5; it rests mostly on the decoder);
3. 8×8 JPEGs, model input 8×8: decoding costs almost nothing, so this is the per-image cost of
   everything else, as images/s of one process (goal ≥ 5,000 on the 2-core CI machine).

"Steady" leaves out the first batch: images of batches 2..N ÷ (last ack − first batch's ack).
The model is loaded before the rounds and warmed before each consumer's first lease, as in
production. Each ratio is the median over `--rounds` of consumer ÷ the mean of the decoder's
rates just before and just after it. On a shared machine those wall-clock ratios swing with the
neighbours' load, so the CPU-time ratio is printed beside them: CPU seconds per image of the
raw decoder ÷ of the whole consumer process, which is what the images/s ratio comes to when the
consumer has the cores to itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import photos, rate_line, ratio_line, samples
from bench.projection import save_measured

Decoder = Callable[[bytes, tuple[int, int]], Any]
PHOTO_INPUT = (299, 299)
TINY = (8, 8)


def near_free_model(folder: Path, size: tuple[int, int]) -> Path:
    """Every 16th pixel → GAP → Dense(1000, softmax) at `size`: a real classifier's outputs for
    almost no compute (what is left is the model call itself and the input's conversion)."""
    import keras

    path = folder / f"near_free_{size[0]}x{size[1]}.keras"
    if not path.exists():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((*size, 3))
        x = keras.layers.MaxPooling2D(pool_size=1, strides=min(16, *size))(inputs)
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(x))
        outputs = keras.layers.Dense(1000, activation="softmax")(x)
        folder.mkdir(parents=True, exist_ok=True)
        keras.Model(inputs, outputs, name="near_free").save(path)
    return path


@dataclass(frozen=True)
class Rate:
    images_per_s: float
    cpu_s_per_image: float  # of this whole process while it ran


def decode_rate(decoder: Decoder, blobs: list[bytes], size: tuple[int, int], threads: int) -> Rate:
    """`decoder` over `blobs` on a pool of `threads` (bytes in memory: decode only).

    The threads run at the consumer's decode threads' priority (`lower_thread_priority`): on a
    shared machine, niced threads get less of it than the bench's own would, so "the same threads"
    means the same number at the same niceness.
    """
    from consumer.pipeline import lower_thread_priority

    with ThreadPoolExecutor(threads, initializer=lower_thread_priority) as pool:
        list(pool.map(lambda b: decoder(b, size), blobs[: threads * 4]))  # start the threads
        started, cpu = time.perf_counter(), time.process_time()
        for _ in pool.map(lambda b: decoder(b, size), blobs):
            pass
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Rate(len(blobs) / wall, cpu / len(blobs))


def consumer_rate(work: Path, tasks: Any, model: Path, folder: Path, run_id: str, args: argparse.Namespace) -> Rate:
    """One fresh in-process consumer draining `folder`: steady images/s, CPU per image.

    `tasks` holds the model already loaded, so the CPU figure is the pipeline's, not the load's
    (the consumer still warms it before its first batch, as always).
    """
    from consumer.runner import Consumer
    from producer.enqueue import EnqueueRequest, enqueue
    from workpool.runs import RunStore
    from workpool.settings import load_settings
    from workpool.storage import open_result_store

    settings = load_settings(home=work / "home", queue="ceiling", batch_size=args.batch_size, idle_exit_s=0.5,
                             decode_threads=threads_of(args))  # fmt: skip
    enqueue(settings, EnqueueRequest(source=str(folder), run_id=run_id, model=str(model)), progress_bar=False)
    consumer = Consumer(settings, "ceiling", tasks=tasks, poll_s=0.05)
    cpu = time.process_time()
    consumer.run()
    cpu_s = time.process_time() - cpu
    if consumer.error is not None:
        raise RuntimeError(f"consumer failed: {consumer.error}")
    records = sorted(RunStore(open_result_store(settings)).read_batch_records(run_id), key=lambda r: r.acked_at)
    if any(r.images_failed for r in records):
        raise RuntimeError(f"run {run_id}: some images failed to decode")
    first, rest = records[0], records[1:]
    steady = sum(r.images for r in rest) / (rest[-1].acked_at - first.acked_at).total_seconds()
    return Rate(steady, cpu_s / sum(r.images for r in records))


def threads_of(args: argparse.Namespace) -> int:
    return int(args.threads or os.cpu_count() or 1)


def measure_set(
    work: Path, name: str, folder: Path, model: Path, size: tuple[int, int], args: argparse.Namespace
) -> dict[str, float]:
    """Median over rounds of: consumer ÷ each decoder (mean of its rates just before and after)."""
    from consumer.images import decode_image, decode_with_pillow
    from consumer.tasks import TaskCache
    from workpool.settings import load_settings

    tasks = TaskCache(load_settings(home=work / "home"))
    tasks.get("classification", str(model), None).warm(args.batch_size)
    threads = threads_of(args)
    blobs = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    rows: list[dict[str, float]] = []
    for r in range(args.rounds):
        fast, pillow = (
            [decode_rate(decode_image, blobs, size, threads)],
            [decode_rate(decode_with_pillow, blobs, size, threads)],
        )
        consumer = consumer_rate(work, tasks, model, folder, f"{name}-{r}", args)
        fast.append(decode_rate(decode_image, blobs, size, threads))
        pillow.append(decode_rate(decode_with_pillow, blobs, size, threads))
        row = {
            "consumer": consumer.images_per_s,
            "fast": statistics.mean(x.images_per_s for x in fast),
            "pillow": statistics.mean(x.images_per_s for x in pillow),
            "consumer_cpu_us": consumer.cpu_s_per_image * 1e6,
            "fast_cpu_us": statistics.mean(x.cpu_s_per_image for x in fast) * 1e6,
        }
        row |= {
            "vs_fast": row["consumer"] / row["fast"],
            "vs_pillow": row["consumer"] / row["pillow"],
            "cpu_vs_fast": row["fast_cpu_us"] / row["consumer_cpu_us"],
        }
        rows.append(row)
        print(
            f"  {name} round {r + 1}: consumer {row['consumer']:,.0f} images/s ({row['consumer_cpu_us']:,.0f} µs "
            f"CPU per image); decode_image {row['fast']:,.0f} ({row['fast_cpu_us']:,.0f} µs); Pillow+draft "
            f"{row['pillow']:,.0f} images/s ({threads} threads): ÷ decode_image {row['vs_fast']:.2f}, "
            f"÷ Pillow {row['vs_pillow']:.2f}, CPU-time ratio {row['cpu_vs_fast']:.2f}",
            flush=True,
        )
    result = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    result["kb"] = sum(len(b) for b in blobs) / len(blobs) / 1024
    return result


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=640, help="photos per photo set (default 640)")
    parser.add_argument("--tiny-images", type=int, default=8192, help="8×8 JPEGs (default 8192)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="decode threads, both sides (0: one per core)")
    parser.add_argument("--rounds", type=int, default=3, help="median of the rounds' ratios (default 3)")
    parser.add_argument("--no-save", action="store_true", help="keep the 8×8 figure out of bench.projection's inputs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    shipped, seed_like, tiny = photos(args.images), photos(args.images, (800, 800)), samples(args.tiny_images, TINY)
    print("Ceiling: one consumer, near-free model, embedded queue, local files", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        work = Path(tmp)
        photo_model, tiny_model = near_free_model(work, PHOTO_INPUT), near_free_model(work, TINY)
        results = {
            "photos": measure_set(work, "photos", shipped, photo_model, PHOTO_INPUT, args),
            "800x800": measure_set(work, "800x800", seed_like, photo_model, PHOTO_INPUT, args),
            "8x8": measure_set(work, "8x8", tiny, tiny_model, TINY, args),
        }
    lines = []
    for name in ("photos", "800x800"):
        r = results[name]
        lines.append(ratio_line(f"ceiling {name}: consumer ÷ raw decode_image (images/s)", r["vs_fast"], "≥ 0.85"))
        lines.append(ratio_line(f"ceiling {name}: decode_image ÷ consumer (CPU per image)", r["cpu_vs_fast"]))
        goal = "≥ 1.5" if name == "800x800" else ""
        lines.append(ratio_line(f"ceiling {name}: consumer ÷ raw Pillow+draft (images/s)", r["vs_pillow"], goal))
    small = results["8x8"]
    lines.append(rate_line("ceiling 8x8 images: one consumer process", small["consumer"], "images/s"))
    lines.append(rate_line("ceiling 8x8 images: CPU per image, whole consumer", small["consumer_cpu_us"], "µs"))
    lines.append(ratio_line("ceiling 8x8: consumer images/s ÷ 5,000", small["consumer"] / 5000, "≥ 1.0"))
    print("\n".join(lines), flush=True)
    if not args.no_save:  # one process's ceiling is the projection's per-node cap P
        save_measured({"process_images_per_s": small["consumer"]})
    return lines


if __name__ == "__main__":
    main()
