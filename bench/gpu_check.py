"""GPU check: InceptionV3 in mixed precision on JAX, model alone against the real pipeline, one GPU.

    python3 -m bench.gpu_check [--wheels .whl] [--batch-size 128] [--batches 60] [--out result.json]
    python -m bench.gpu_check --smoke        # a tiny run on this machine's CPU (figures mean nothing)

Made for a lent GPU machine (see docs/performance.md, "GPU check"), which has JAX but neither
TensorFlow nor Keras: packages that are missing are installed from the wheels in `--wheels`
(into a scratch folder, then the script starts itself again with them on its path). Then, with
`KERAS_BACKEND=jax` and `--precision mixed`:

1. writes `--distinct` real photos re-encoded at 800×800 (~125 KB, like the seed dataset's) and
   copies of them up to the images needed, in local folders, enqueued as runs (with manifests,
   as `producer enqueue` writes them);
2. saves a random-weight InceptionV3 (the same computation as the trained one);
3. cold start: a fresh consumer process (embedded queue) drains `--cold-batches` batches: from
   its start to its first acknowledged batch (imports, model load, compilation, first batch);
4. model alone: the consumer's own model call on one decoded, preprocessed batch, repeated;
5. end-to-end: a consumer in this process (the model already compiled) drains `--batches`
   batches: images ÷ (last ack − first dequeue);
6. prints the model-only and end-to-end images/s, their ratio, the GPU's mean utilisation
   during each (nvidia-smi, sampled every 100 ms), the GPU busy share the consumer itself recorded
   in the end-to-end batches' timing records (NVML, consumer/gpu_stats.py: what `status`, `report`
   and the dashboard show), and the cold start; `--out` writes them as JSON.

Under 8 minutes on one H200 with the defaults (7,680 images end to end).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(tempfile.gettempdir()) / "workpool-gpu-check-site"
# import name → what provides it (what this script and the consumer import beyond the GPU image)
NEEDED = {
    "keras": "keras (+ namex, optree)",
    "simplejpeg": "simplejpeg",
    "cv2": "opencv-python-headless",
    "pydantic": "pydantic (+ pydantic-core, annotated-types, typing-inspection)",
    "pydantic_settings": "pydantic-settings (+ python-dotenv)",
    "skimage": "scikit-image",
    "PIL": "pillow",
    "pynvml": "nvidia-ml-py",  # the consumer's own GPU busy share per batch (consumer/gpu_stats.py)
}


def ensure_packages(wheels: Path | None) -> None:
    """Install what is missing from `wheels`, then start this script again with them importable."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    found = sorted(wheels.glob("*.whl")) if wheels is not None and wheels.is_dir() else []
    if not found or os.environ.get("WORKPOOL_GPU_CHECK_INSTALLED"):
        wanted = ", ".join(NEEDED[m] for m in missing)
        sys.exit(f"gpu_check: missing {wanted}; give --wheels DIR with their wheels (docs/performance.md)")
    print(f"gpu_check: installing {len(found)} wheels for {', '.join(missing)} into {SITE}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
         "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, found)],
        check=True,
    )  # fmt: skip
    paths = [str(SITE), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    os.environ["WORKPOOL_GPU_CHECK_INSTALLED"] = "1"
    os.execv(sys.executable, [sys.executable, "-m", "bench.gpu_check", *sys.argv[1:]])


class GpuSampler:
    """nvidia-smi's utilisation every 100 ms in the background; mean over a time window."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (time, utilisation %, memory MiB)
        self._proc: subprocess.Popen[str] | None = None
        if shutil.which("nvidia-smi") is None:
            return
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                # first GPU only (one line per GPU per sample)
                self.samples.append((time.time(), float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                continue

    def mean(self, start: float, end: float) -> float | None:
        values = [u for t, u, _ in self.samples if start <= t <= end]
        return statistics.fmean(values) if values else None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(5)


def pct(value: float | None) -> str:
    return "n/a (no nvidia-smi)" if value is None else f"{value:.0f}%"


def write_images(folder: Path, count: int, distinct: Path) -> None:
    """`count` JPEGs in `folder`: copies of the distinct photos (decode cost is per file, not per photo)."""
    blobs = [p.read_bytes() for p in sorted(distinct.glob("*.jpg"))]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"img_{i:06d}.jpg").write_bytes(blobs[i % len(blobs)])


def enqueue_run(settings: Any, model: Path, folder: Path, run_id: str) -> None:
    """A run as users enqueue it (with its manifest, so a starting consumer can warm its model)."""
    from producer.enqueue import EnqueueRequest, enqueue

    enqueue(settings, EnqueueRequest(source=str(folder), run_id=run_id, model=str(model)), progress_bar=False)


def records(settings: Any, run_id: str) -> list[Any]:
    from workpool.runs import RunStore
    from workpool.storage import open_result_store

    return sorted(RunStore(open_result_store(settings)).read_batch_records(run_id), key=lambda r: r.acked_at)


COLD_CONSUMER = """
import json, sys
from consumer.runner import Consumer
from workpool.settings import load_settings
consumer = Consumer(load_settings(**json.loads(sys.argv[1])), "cold-start", poll_s=0.05)
consumer.run()
sys.exit(1 if consumer.error else 0)
"""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="folder of wheels for missing packages")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=60, help="batches end to end")
    parser.add_argument("--cold-batches", type=int, default=4, help="batches the cold-start consumer drains")
    parser.add_argument("--model-calls", type=int, default=30, help="timed model-only calls")
    parser.add_argument("--distinct", type=int, default=64, help="distinct photos (the rest are copies)")
    parser.add_argument(
        "--arch", default="inceptionv3", help="random-weight architecture (orchestration.tools.random_models)"
    )
    parser.add_argument("--precision", choices=["mixed", "float32"], help="default mixed (float32 with --smoke)")
    parser.add_argument("--backend", default="jax", help="KERAS_BACKEND (jax on the GPU machine)")
    parser.add_argument("--smoke", action="store_true", help="tiny run for a CPU: 2 batches of 4, figures meaningless")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.batches, args.cold_batches, args.model_calls, args.distinct = 4, 2, 1, 2, 5
        args.precision = args.precision or "float32"
        args.backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    args.precision = args.precision or "mixed"
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    ensure_packages(args.wheels)
    return run(args)


def say(line: str) -> None:
    print(f"gpu_check: {line}", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from consumer.images import decode_image
    from consumer.runner import Consumer
    from consumer.tasks import TaskCache
    from orchestration.reports.progress import gpu_busy_by_worker
    from orchestration.tools.random_models import build_model
    from orchestration.tools.samples import write_photos
    from workpool.settings import load_settings

    sampler = GpuSampler()
    work = Path(tempfile.mkdtemp(prefix="workpool-gpu-check-"))
    try:
        options = {"home": str(work / "home"), "batch_size": args.batch_size, "precision": args.precision,
                   "idle_exit_s": 1.0}  # fmt: skip
        settings = load_settings(**options, queue="gpucheck")
        images = args.batch_size * (args.batches + args.cold_batches)
        say(f"writing {images} JPEGs (800x800, {args.distinct} distinct photos) under {work}")
        distinct = work / "distinct"
        write_photos(distinct, args.distinct, (800, 800), quality=90)
        write_images(work / "cold", args.batch_size * args.cold_batches, distinct)
        write_images(work / "e2e", args.batch_size * args.batches, distinct)
        say(f"building a random-weight {args.arch}")
        model = build_model(args.arch, work / "models")

        # 3. cold start: a fresh process, from its start to its first acknowledged batch
        cold = load_settings(**options, queue="gpucheck-cold")
        enqueue_run(cold, model, work / "cold", "cold")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        say(f"cold start: a fresh consumer drains {args.cold_batches} batch(es) of {args.batch_size}")
        started = datetime.now(UTC)
        child = subprocess.run(
            [sys.executable, "-c", COLD_CONSUMER, json.dumps({**options, "queue": "gpucheck-cold"})],
            env=env, cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        cold_records = records(cold, "cold")
        if child.returncode != 0 or len(cold_records) != args.cold_batches:
            raise SystemExit(f"gpu_check: the cold-start consumer failed:\n{child.stderr[-3000:]}")
        cold_start_s = (cold_records[0].acked_at - started).total_seconds()
        first_batch_s = (cold_records[0].acked_at - cold_records[0].dequeued_at).total_seconds()

        # 4. model alone, through the consumer's own call
        tasks = TaskCache(settings)
        task = tasks.get("classification", str(model), None)
        assert task.input_size is not None
        files = sorted((work / "e2e").glob("*.jpg"))[: args.batch_size]
        batch = np.stack([task.preprocess(decode_image(p.read_bytes(), task.input_size)) for p in files])
        say(f"model alone: {args.model_calls} calls on one batch of {args.batch_size} (after 2 warm-up calls)")
        task.predict(batch)
        task.predict(batch)
        t0 = time.time()
        for _ in range(args.model_calls):
            task.predict(batch)
        t1 = time.time()
        model_rate = args.model_calls * args.batch_size / (t1 - t0)
        model_util = sampler.mean(t0, t1)

        # 5. end to end: the real pipeline in this process (model compiled above)
        enqueue_run(settings, model, work / "e2e", "e2e")
        say(f"end to end: a consumer drains {args.batches} batches of {args.batch_size}")
        consumer = Consumer(settings, "gpu-check", tasks=tasks, poll_s=0.02)
        consumer.run()
        done = records(settings, "e2e")
        if consumer.error is not None or len(done) != args.batches:
            raise SystemExit(f"gpu_check: the end-to-end run failed: {consumer.error}")
        first, last = min(r.dequeued_at for r in done), max(r.acked_at for r in done)
        e2e_rate = sum(r.images for r in done) / (last - first).total_seconds()
        e2e_util = sampler.mean(first.timestamp(), last.timestamp())
        steady = statistics.median((r.acked_at - r.dequeued_at).total_seconds() for r in done[1:] or done)
        recorded_util = gpu_busy_by_worker(done).get("gpu-check")  # None: no NVML or no GPU
    finally:
        sampler.stop()
        shutil.rmtree(work, ignore_errors=True)

    figures = {
        "machine": machine_line(),
        "devices": devices(args.backend),
        "keras_backend": args.backend,
        "precision": args.precision,
        "arch": args.arch,
        "batch_size": args.batch_size,
        "decode_threads": settings.decode_threads or os.cpu_count(),
        "model_only_images_per_s": round(model_rate, 1),
        "end_to_end_images_per_s": round(e2e_rate, 1),
        "end_to_end_over_model_only": round(e2e_rate / model_rate, 3),
        "gpu_utilisation_model_only_pct": model_util,
        "gpu_utilisation_end_to_end_pct": e2e_util,
        "gpu_busy_recorded_end_to_end_pct": recorded_util,
        "cold_start_s": round(cold_start_s, 2),
        "cold_first_batch_s": round(first_batch_s, 3),
        "steady_batch_s": round(steady, 3),
    }
    say(
        f"on {figures['machine']} (model on {figures['devices']}): {args.arch}, {args.precision} precision, "
        f"KERAS_BACKEND={args.backend}, batch {args.batch_size}, {figures['decode_threads']} decode threads"
    )
    print(f"RATE model_only = {model_rate:,.0f} images/s  (GPU busy {pct(model_util)})")
    print(f"RATE end_to_end = {e2e_rate:,.0f} images/s  (GPU busy {pct(e2e_util)})")
    shown = "n/a (no GPU seen by NVML)" if recorded_util is None else f"{recorded_util:.0f}%"
    print(f"GPU busy end_to_end, as the consumer recorded it (NVML, per batch) = {shown}")
    print(f"RATIO end_to_end_over_model_only = {e2e_rate / model_rate:.3f}")
    print(f"COLD start = {cold_start_s:.1f} s from process start to first ack (first batch {first_batch_s:.2f} s "
          f"from its dequeue; a steady batch {steady:.3f} s)", flush=True)  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))
    return figures


def devices(backend: str) -> str:
    """Where the framework runs the model (a GPU check on a CPU would mean nothing)."""
    if backend == "jax":
        import jax

        return ", ".join(str(d) for d in jax.devices())
    if backend == "tensorflow":
        import tensorflow as tf

        return ", ".join(d.name for d in tf.config.list_logical_devices()) or "cpu"
    return backend


def machine_line() -> str:
    gpu = "no GPU"
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout.strip()
        gpu = out.splitlines()[0] if out else gpu
    return f"{os.cpu_count()} cores, {gpu}, Python {sys.version.split()[0]}"


if __name__ == "__main__":
    main()
