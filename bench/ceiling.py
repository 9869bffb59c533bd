"""The consumer's ceiling: how fast one consumer process goes when the model costs nothing.

    .venv/bin/python -m bench.ceiling [--images 640] [--tiny-images 8192] [--batch-size 64] [--threads 0]

A near-free model (global average pooling and one dense layer to 1,000 softmax classes, so
post-processing, labels and result rows are those of a real ImageNet classifier) leaves
everything else the consumer does: receive, manifest check, fetch, decode + resize, stacking,
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
The model is warmed before the first lease (`consumer.warmup`), as in production.
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
from pathlib import Path
from typing import Any

from bench.common import photos, rate_line, ratio_line, samples

Decoder = Callable[[bytes, tuple[int, int]], Any]
PHOTO_INPUT = (299, 299)
TINY = (8, 8)


def near_free_model(folder: Path, size: tuple[int, int]) -> Path:
    """GAP → Dense(1000, softmax) at `size`: a real classifier's outputs for almost no compute."""
    import keras

    path = folder / f"near_free_{size[0]}x{size[1]}.keras"
    if not path.exists():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((*size, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
        outputs = keras.layers.Dense(1000, activation="softmax")(x)
        folder.mkdir(parents=True, exist_ok=True)
        keras.Model(inputs, outputs, name="near_free").save(path)
    return path


def decode_rate(decoder: Decoder, blobs: list[bytes], size: tuple[int, int], threads: int) -> float:
    """Images/s of `decoder` over `blobs` on a pool of `threads` (bytes in memory: decode only)."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: decoder(b, size), blobs[: threads * 4]))  # start the threads
        started = time.perf_counter()
        for _ in pool.map(lambda b: decoder(b, size), blobs):
            pass
        return len(blobs) / (time.perf_counter() - started)


def consumer_rate(
    work: Path, model: Path, folder: Path, batch_size: int, run_id: str, threads: int
) -> tuple[float, float]:
    """(steady images/s, CPU seconds per image) of one fresh in-process consumer draining `folder`."""
    from consumer.runner import Consumer
    from producer.enqueue import EnqueueRequest, enqueue
    from workpool.runs import RunStore
    from workpool.settings import load_settings
    from workpool.storage import open_result_store

    settings = load_settings(
        home=work / "home", queue="ceiling", batch_size=batch_size, idle_exit_s=0.5, decode_threads=threads
    )
    enqueue(settings, EnqueueRequest(source=str(folder), run_id=run_id, model=str(model)), progress_bar=False)
    consumer = Consumer(settings, "ceiling", poll_s=0.05)
    cpu = time.process_time()
    consumer.run()
    cpu_s = time.process_time() - cpu
    if consumer.error is not None:
        raise RuntimeError(f"consumer failed: {consumer.error}")
    records = sorted(RunStore(open_result_store(settings)).read_batch_records(run_id), key=lambda r: r.acked_at)
    if any(r.images_failed for r in records):
        raise RuntimeError(f"run {run_id}: some images failed to decode")
    first, rest = records[0], records[1:]
    images = sum(r.images for r in records)
    return sum(r.images for r in rest) / (rest[-1].acked_at - first.acked_at).total_seconds(), cpu_s / images


def measure_set(
    work: Path, name: str, folder: Path, model: Path, size: tuple[int, int], args: argparse.Namespace
) -> dict[str, float]:
    from consumer.images import decode_image, decode_with_pillow

    threads = args.threads or os.cpu_count() or 1
    blobs = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    fast, pillow, e2e, cpu = [], [], [], []
    for r in range(args.rounds):
        fast.append(decode_rate(decode_image, blobs, size, threads))
        pillow.append(decode_rate(decode_with_pillow, blobs, size, threads))
        rate, cpu_per_image = consumer_rate(work, model, folder, args.batch_size, f"{name}-{r}", threads)
        e2e.append(rate)
        cpu.append(cpu_per_image)
        fast.append(decode_rate(decode_image, blobs, size, threads))
        pillow.append(decode_rate(decode_with_pillow, blobs, size, threads))
        print(
            f"  {name} round {r + 1}: consumer {e2e[-1]:,.0f} images/s ({cpu[-1] * 1e6:,.0f} µs CPU per image, "
            f"start-up included); decode_image {fast[-2]:,.0f} / "
            f"{fast[-1]:,.0f}; Pillow+draft {pillow[-2]:,.0f} / {pillow[-1]:,.0f} images/s ({threads} threads)",
            flush=True,
        )
    return {
        "consumer": statistics.median(e2e),
        "fast": statistics.median(fast),
        "pillow": statistics.median(pillow),
        "cpu_us": statistics.median(cpu) * 1e6,
        "kb": sum(len(b) for b in blobs) / len(blobs) / 1024,
    }


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=640, help="photos per photo set (default 640)")
    parser.add_argument("--tiny-images", type=int, default=8192, help="8×8 JPEGs (default 8192)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="decode threads, both sides (0: one per core)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    shipped, seed_like, tiny = photos(args.images), photos(args.images, (800, 800)), samples(args.tiny_images, TINY)
    print("Ceiling: one consumer, near-free model (GAP + dense 1000 softmax), embedded queue, local files", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        work = Path(tmp)
        photo_model, tiny_model = near_free_model(work, PHOTO_INPUT), near_free_model(work, TINY)
        results = {
            "photos": measure_set(work, "photos", shipped, photo_model, PHOTO_INPUT, args),
            "800x800": measure_set(work, "800x800", seed_like, photo_model, PHOTO_INPUT, args),
            "8x8": measure_set(work, "8x8", tiny, tiny_model, TINY, args),
        }
    lines = []
    for name, r in results.items():
        print(
            f"  {name}: {r['kb']:.0f} KB per file; consumer {r['consumer']:,.0f} images/s "
            f"({r['cpu_us']:,.0f} µs CPU per image), decode_image "
            f"{r['fast']:,.0f}, Pillow+draft {r['pillow']:,.0f} images/s",
            flush=True,
        )
    for name in ("photos", "800x800"):
        r = results[name]
        lines.append(ratio_line(f"ceiling {name}: consumer ÷ raw decode_image", r["consumer"] / r["fast"], "≥ 0.85"))
        goal = "≥ 1.5" if name == "800x800" else ""
        lines.append(ratio_line(f"ceiling {name}: consumer ÷ raw Pillow+draft", r["consumer"] / r["pillow"], goal))
    lines.append(rate_line("ceiling 8x8 images: one consumer process", results["8x8"]["consumer"], "images/s"))
    lines.append(ratio_line("ceiling 8x8: consumer images/s ÷ 5,000", results["8x8"]["consumer"] / 5000, "≥ 1.0"))
    print("\n".join(lines), flush=True)
    return lines


if __name__ == "__main__":
    main()
