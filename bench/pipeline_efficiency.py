"""How close the consumer's end-to-end rate comes to the model's own rate, on this machine.

    .venv/bin/python bench/pipeline_efficiency.py [--batches 4] [--rounds 3] [--arch inceptionv3]
                                                  [--batch-sizes 32,64] [--sizes 500x375,800x600] [--json]

For each (JPEG size, batch size), in one process, in rounds of:
1. *decoded*: the model's images/s on already decoded and preprocessed tensors, through the
   same compiled call the consumer uses (the task's `predict`);
2. *end-to-end*: a real consumer (embedded queue, local JPEG folder, prefetch, decode pool,
   result writes, acks) draining `--batches` batches of new images: images / (last ack - first
   dequeue), so the pipeline's start-up (decoding the first batch) counts;
3. *decoded* again.
A round's ratio is end-to-end / mean of the two decoded rates around it, which cancels slow
drifts in the machine's load; the configuration's ratio is the median over rounds. On a shared
machine wall-clock rates still swing with other processes, so the CPU-time ratio (CPU seconds
per image of the model alone ÷ of the whole consumer) is printed beside it: on a machine the
model saturates, it is what the ratio would be without the competition. The model is
InceptionV3 (299×299; or VGG16, 224×224, with `--arch vgg16`) with random weights
(`weights=None`): the same computation as the trained one. The last line is the worst
configuration's ratio (goal ≥ 0.95).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consumer.images import decode_image
from consumer.runner import Consumer
from consumer.tasks import TaskCache
from tests.support.images import write_sample_images
from tests.support.messages import record_runs
from tests.support.models import save_inception_v3, save_vgg16
from workpool.messages import BatchMessage
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import load_settings
from workpool.storage import open_result_store


def decoded_rate(task: Any, batch: np.ndarray, batches: int) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of the model alone."""
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        task.predict(batch)
    images = batches * len(batch)
    return images / (time.perf_counter() - started), (time.process_time() - cpu) / images


def end_to_end_rate(
    work: Path, tasks: TaskCache, model: Path, folder: Path, names: list[str], batch_size: int, run_id: str
) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of a consumer draining `names`."""
    settings = load_settings(home=work / "home", queue="bench", idle_exit_s=0.5)
    queue = open_queue(settings)
    queue.create()
    batches = [names[i : i + batch_size] for i in range(0, len(names), batch_size)]
    messages = [
        BatchMessage(run_id=run_id, batch_id=f"b{i:04d}", task="classification", model=str(model), source=str(folder),
                     images=images)
        for i, images in enumerate(batches)
    ]  # fmt: skip
    record_runs(settings, *messages)  # consumers take only batches of a recorded run (docs/security.md)
    queue.send([m.encode() for m in messages])
    consumer = Consumer(settings, "bench", tasks=tasks)
    cpu = time.process_time()
    consumer.run()
    cpu_per_image = (time.process_time() - cpu) / len(names)
    records = RunStore(open_result_store(settings)).read_batch_records(run_id)
    assert len(records) == len(batches) and consumer.error is None
    wall = (max(r.acked_at for r in records) - min(r.dequeued_at for r in records)).total_seconds()
    return sum(r.images for r in records) / wall, cpu_per_image


def measure(
    work: Path, model: Path, size: tuple[int, int], batch_size: int, batches: int, rounds: int
) -> dict[str, Any]:
    folder = work / f"images_{size[0]}x{size[1]}_b{batch_size}"
    names = write_sample_images(folder, batch_size * batches * rounds, size)
    tasks = TaskCache(load_settings(home=work / "home"))
    task = tasks.get("classification", str(model), None)
    assert task.input_size is not None
    batch = np.stack(
        [task.preprocess(decode_image((folder / n).read_bytes(), task.input_size)) for n in names[:batch_size]]
    )
    task.predict(batch)  # warm-up: tracing and first-call allocation are not what we measure
    ratios, cpu_ratios, decoded, e2e = [], [], [], []
    for r in range(rounds):
        before, cpu_before = decoded_rate(task, batch, batches)
        chunk = names[r * batch_size * batches : (r + 1) * batch_size * batches]
        run_id = f"{model.stem}-{size[0]}-{batch_size}-{r}"
        rate, cpu_e2e = end_to_end_rate(work, tasks, model, folder, chunk, batch_size, run_id)
        after, cpu_after = decoded_rate(task, batch, batches)
        decoded += [before, after]
        e2e.append(rate)
        ratios.append(rate / ((before + after) / 2))
        cpu_ratios.append(((cpu_before + cpu_after) / 2) / cpu_e2e)
        logging.info(
            "round %d: decoded %.2f / %.2f images/s, end-to-end %.2f images/s, ratio %.3f, CPU-time ratio %.3f",
            r, before, after, rate, ratios[-1], cpu_ratios[-1],
        )  # fmt: skip
    return {
        "decoded_images_per_s": statistics.median(decoded),
        "end_to_end_images_per_s": statistics.median(e2e),
        "ratio": statistics.median(ratios),
        "round_ratios": [round(x, 4) for x in ratios],
        # CPU seconds per image, model alone ÷ whole consumer: what the pipeline costs in CPU,
        # insensitive to other processes competing for the machine (wall-clock ratios are not).
        "cpu_time_ratio": statistics.median(cpu_ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=4, help="batches per end-to-end run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="32,64")
    parser.add_argument("--sizes", default="500x375,800x600", help="JPEG sizes, WxH")
    parser.add_argument("--arch", default="inceptionv3", help="inceptionv3 or vgg16 (comma-separated for both)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = []
    with tempfile.TemporaryDirectory(prefix="pipeline-efficiency-") as tmp:
        work = Path(tmp)
        for arch in args.arch.split(","):
            if arch not in BUILDERS:
                parser.error(f"--arch: expected one of {', '.join(BUILDERS)}, got {arch!r}")
            model = BUILDERS[arch](work / "models")
            for size_text in args.sizes.split(","):
                width, height = (int(v) for v in size_text.lower().split("x"))
                for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                    row: dict[str, Any] = {"arch": arch, "jpeg": f"{width}x{height}", "batch_size": batch_size}
                    row |= measure(work, model, (width, height), batch_size, args.batches, args.rounds)
                    results.append(row)
                    report(row)
    if args.json:
        print(json.dumps({"cpu_count": os.cpu_count(), "results": results}))
    print(f"ratio (worst configuration, end-to-end / decoded): {min(r['ratio'] for r in results):.3f}")


BUILDERS = {"inceptionv3": save_inception_v3, "vgg16": save_vgg16}


def report(row: dict[str, Any]) -> None:
    decoded, e2e = row["decoded_images_per_s"], row["end_to_end_images_per_s"]
    print(
        f"{row['arch']} batch {row['batch_size']:3d}, JPEG {row['jpeg']}: decoded {decoded:6.2f} images/s,"
        f" end-to-end {e2e:6.2f} images/s, ratio {row['ratio']:.3f} (rounds {row['round_ratios']}),"
        f" CPU-time ratio {row['cpu_time_ratio']:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
