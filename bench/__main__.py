"""`make bench`: every benchmark in sequence, each printing its ratios; all ratios again at the end.

    .venv/bin/python -m bench [--quick]

Under 15 minutes on a 2-core CPU machine. `--quick` shrinks every plan to a smoke run (its
figures mean nothing). Each benchmark also runs on its own: `python -m bench.scaling`, …
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable

from bench import (
    ceiling,
    decode,
    enqueue_rate,
    memory,
    pipeline,
    projection,
    run_reads,
    scaling,
    stragglers,
    warm_start,
)
from bench.common import machine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny plans: a smoke run, figures meaningless")
    args = parser.parse_args()
    quick = args.quick
    steps: list[tuple[str, Callable[[], list[str]]]] = [
        (
            "pipeline efficiency",
            lambda: pipeline.main(["--batch-size", "8", "--batches", "1", "--no-save"] if quick else []),
        ),
        ("scaling", lambda: scaling.main(["--quick"] if quick else [])),
        ("stragglers", lambda: stragglers.main(["--images", "512"] if quick else [])),
        (
            "enqueue rate",
            lambda: enqueue_rate.main(["--names", "20000", "--azurite-messages", "20"] if quick else []),
        ),
        ("memory", lambda: memory.main(["--images", "200"] if quick else [])),
        (
            "run reads",
            lambda: run_reads.main(
                ["--small", "10", "--large", "20", "--repeats", "1", "--seed-images", "6400"] if quick else []
            ),
        ),
        ("decode", lambda: decode.main(["--seconds", "0.5", "--rounds", "1"] if quick else [])),
        (
            "warm start",
            lambda: warm_start.main(["--arch", "mobilenetv2", "--batch-size", "8", "--batches", "3"] if quick else []),
        ),
        (
            "ceiling",
            lambda: ceiling.main(
                ["--images", "128", "--tiny-images", "1024", "--rounds", "1", "--no-save"] if quick else []
            ),
        ),
        ("projection", lambda: projection.main([])),
    ]
    started = time.monotonic()
    print(f"workpool benchmarks on {machine()}", flush=True)
    ratios: list[str] = []
    failed: list[str] = []
    for name, step in steps:
        step_started = time.monotonic()
        print(f"\n=== {name} ===", flush=True)
        try:
            ratios += step()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            ratios.append(f"RATIO {name} = FAILED (see above)")
        print(f"({name}: {time.monotonic() - step_started:.0f} s)", flush=True)
    print(f"\n=== all ratios ({time.monotonic() - started:.0f} s in all, {machine()}) ===")
    print("\n".join(ratios), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
