"""Reading a run: `orchestration status --json` of a 1,000-batch run against a 100-batch run, and
`orchestration results --out x.parquet` of a seed-size run (366,111 images in 5,721 batches of
64), on Azurite.

The result store is filled directly through `RunStore` (results rows, timing records, manifest
exactly as consumers and the producer write them; nothing is scored), several writes at a time.
Each run has its own result container and queue, so `status` sees one run. Each command runs as
the user runs it (a fresh process, its start-up included), the two sizes alternately, and the
median of the repeats counts. The goals: status of 1,000 batches at most 1.6× the time of 100
(the time of a run's state grows with listings, not with one request per batch) and results of
the seed-size run under 15 s.

    python -m bench.run_reads [--small 100] [--large 1000] [--repeats 5] [--seed-images 366111]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from bench.common import ROOT, bench_settings, ratio_line, scratch_home
from workpool.queue import open_queue
from workpool.runs import BatchRecord, Manifest, ResultRow, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

BATCH = 64
SEED_IMAGES = 366_111
WRITERS = 16
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def image_name(i: int) -> str:
    synset = f"n{1440764 + (i % 1000) * 9973:08d}"
    return f"{synset}/{synset}_{i}.JPEG"


def build_run(settings: Settings, run_id: str, images: int) -> Manifest:
    """A finished run of `images` images in batches of 64: manifest, results and timing records."""
    names = [image_name(i) for i in range(images)]
    batches = {f"b{n:06d}": names[i : i + BATCH] for n, i in enumerate(range(0, images, BATCH))}
    manifest = Manifest(
        run_id=run_id,
        source="az://images",
        task="classification",
        batch_size=BATCH,
        queue=settings.queue,
        images=images,
        batches=batches,
    )
    store = open_result_store(settings)
    store.ensure()
    runs = RunStore(store)
    open_queue(settings).create()

    def write(item: tuple[int, str]) -> None:
        n, batch_id = item
        worker = f"vm-node-{n % 8 + 1}"
        rows = [
            ResultRow(
                image=image,
                status="ok",
                predictions=[
                    {"label": f"class-{(i + k) % 1000}", "index": (i + k) % 1000, "score": round(0.9 / (k + 1), 4)}
                    for k in range(5)
                ],
                batch_id=batch_id,
                worker=worker,
            )
            for i, image in enumerate(batches[batch_id])
        ]
        runs.write_results(run_id, batch_id, rows)
        start = T0 + timedelta(seconds=n * 0.1)
        runs.write_batch_record(
            BatchRecord(
                run_id=run_id, batch_id=batch_id, worker=worker, attempt=1, images=len(rows), images_ok=len(rows),
                images_failed=0, dequeued_at=start, scored_at=start + timedelta(seconds=0.7),
                acked_at=start + timedelta(seconds=0.8), images_per_s=len(rows) / 0.8,
            )
        )  # fmt: skip

    runs.write_manifest(manifest)
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(write, enumerate(batches)))
    return manifest


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKPOOL_")}
    env.update(
        WORKPOOL_HOME=str(settings.home),
        WORKPOOL_QUEUE=settings.queue,
        WORKPOOL_RESULTS=settings.results,
        PYTHONPATH=str(ROOT),
    )
    assert settings.connection_string is not None
    env["AZURE_STORAGE_CONNECTION_STRING"] = settings.connection_string.get_secret_value()
    return env


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_cli(settings: Settings, *args: str) -> tuple[float, float]:
    """Wall and CPU seconds of one `orchestration ARGS` process, start-up included.

    The CPU time is the command's own (Azurite's is not in it): on a busy shared machine it
    says what the wall time would be with a core to itself.
    """
    command = [sys.executable, "-m", "orchestration", *args]
    cpu_before = children_cpu_s()
    started = time.perf_counter()
    done = subprocess.run(command, env=cli_env(settings), capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds, children_cpu_s() - cpu_before


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=100, help="batches of the small run")
    parser.add_argument("--large", type=int, default=1000, help="batches of the large run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed-images", type=int, default=SEED_IMAGES, help="images of the export run (0: skip)")
    args = parser.parse_args(argv)
    from tests.support.azurite import Azurite

    print("Reading a run on Azurite", flush=True)
    ratios = []
    server = Azurite()
    server.start()
    try:
        with scratch_home("run-reads") as home:

            def settings_for(name: str) -> Settings:
                return bench_settings(home, name, connection_string=server.connection_string)

            sizes = {"small": args.small, "large": args.large}
            stores = {key: settings_for(f"reads-{key}") for key in sizes}
            for key, batches in sizes.items():
                started = time.perf_counter()
                build_run(stores[key], f"status-{key}", batches * BATCH)
                print(f"  built a run of {batches:,} batches in {time.perf_counter() - started:.1f} s", flush=True)
            times: dict[str, list[float]] = {key: [] for key in sizes}
            cpu: dict[str, list[float]] = {key: [] for key in sizes}
            for _ in range(args.repeats):
                for key in sizes:
                    wall_s, cpu_s = timed_cli(stores[key], "status", "--json")
                    times[key].append(wall_s)
                    cpu[key].append(cpu_s)
            medians = {key: statistics.median(values) for key, values in times.items()}
            for key, batches in sizes.items():
                shown = ", ".join(f"{t:.2f}" for t in times[key])
                print(
                    f"  status --json, {batches:,} batches: median {medians[key]:.2f} s ({shown}); "
                    f"CPU median {statistics.median(cpu[key]):.2f} s",
                    flush=True,
                )
            ratio = medians["large"] / medians["small"]
            ratios.append(
                ratio_line(f"status --json time, {args.large:,} ÷ {args.small:,} batches (Azurite)", ratio, "≤ 1.6")
            )
            if args.seed_images:
                seed = settings_for("reads-seed")
                started = time.perf_counter()
                manifest = build_run(seed, "seed", args.seed_images)
                print(
                    f"  built a run of {args.seed_images:,} images in {len(manifest.batches):,} batches "
                    f"in {time.perf_counter() - started:.1f} s",
                    flush=True,
                )
                out = home / "x.parquet"
                seconds, cpu_s = timed_cli(seed, "results", "--run", "seed", "--out", str(out))
                import pyarrow.parquet as pq

                rows = pq.read_metadata(out).num_rows
                if rows != args.seed_images:
                    raise RuntimeError(f"results wrote {rows} rows for {args.seed_images} images")
                print(f"  results --out x.parquet: {rows:,} rows in {seconds:.1f} s ({cpu_s:.1f} s CPU)", flush=True)
                ratios.append(
                    ratio_line(f"results --out x.parquet of {rows:,} images, seconds (Azurite)", seconds, "< 15")
                )
    finally:
        server.stop()
    print("\n".join(ratios), flush=True)
    return ratios


if __name__ == "__main__":
    main()
