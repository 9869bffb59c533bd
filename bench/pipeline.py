"""Pipeline efficiency for `make bench`: InceptionV3 and VGG16, 500×375 and 800×600 JPEGs.

The measurement itself is `bench/pipeline_efficiency.py` (the consumer's end-to-end images/s ÷
the model's images/s on decoded tensors, same batch size, same process); this runs it once per
architecture with a plan sized for `make bench` on a small CPU machine, collects its JSON and
prints the worst ratio last.

    python -m bench.pipeline [--batch-size 16] [--batches 3] [--rounds 1] [--arch inceptionv3,vgg16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from bench.common import ROOT, ratio_line
from bench.projection import save_measured

SCRIPT = ROOT / "bench" / "pipeline_efficiency.py"
SIZES = "500x375,800x600"


@dataclass(frozen=True)
class ArchResult:
    arch: str
    rows: list[dict[str, Any]]

    @property
    def worst(self) -> float:
        return min(float(r["ratio"]) for r in self.rows)

    @property
    def worst_cpu_time(self) -> float | None:
        """CPU seconds per image, model alone ÷ whole consumer: the ratio without other processes' noise."""
        values = [float(r["cpu_time_ratio"]) for r in self.rows if "cpu_time_ratio" in r]
        return min(values) if values else None

    @property
    def decoded_images_per_s(self) -> float:
        return max(float(r["decoded_images_per_s"]) for r in self.rows)


def supports_arch() -> bool:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, cwd=ROOT)
    return "--arch" in out.stdout


def run_one(arch: str, batch_size: int, batches: int, rounds: int, with_arch: bool) -> ArchResult:
    args = [
        sys.executable,
        str(SCRIPT),
        "--batches",
        str(batches),
        "--rounds",
        str(rounds),
        "--batch-sizes",
        str(batch_size),
        "--sizes",
        SIZES,
        "--json",
    ]
    if with_arch:
        args += ["--arch", arch]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert proc.stdout is not None
    data: dict[str, Any] | None = None
    for line in proc.stdout:
        if line.startswith("{"):
            data = json.loads(line)
        else:
            print("  " + line.rstrip(), flush=True)
    if proc.wait() != 0 or data is None:
        raise RuntimeError(f"{SCRIPT.name} failed for {arch} (exit {proc.returncode})")
    return ArchResult(arch, list(data["results"]))


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3, help="batches per measurement (VGG16: 2, it is ~3× slower)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--arch", default="inceptionv3,vgg16")
    parser.add_argument("--no-save", action="store_true", help="do not keep the figures for bench.projection")
    args = parser.parse_args(argv)
    with_arch = supports_arch()
    print("Pipeline efficiency (end-to-end images/s ÷ model images/s on decoded tensors, same batch)", flush=True)
    results: list[ArchResult] = []
    for arch in args.arch.split(","):
        if arch != "inceptionv3" and not with_arch:
            print(f"  {arch}: skipped, {SCRIPT.name} has no --arch option yet (InceptionV3 only)")
            continue
        batches = max(args.batches - 1, 1) if arch == "vgg16" else args.batches
        results.append(run_one(arch, args.batch_size, batches, args.rounds, with_arch))
    lines = []
    for r in results:
        lines.append(ratio_line(f"pipeline efficiency {r.arch}, wall clock (worst size)", r.worst, "≥ 0.95"))
        if r.worst_cpu_time is not None:
            lines.append(ratio_line(f"pipeline efficiency {r.arch}, CPU time (worst size)", r.worst_cpu_time, "≥ 0.95"))
    inception = next((r for r in results if r.arch == "inceptionv3"), None)
    if inception is not None and not args.no_save:
        # The projection takes the CPU-time ratio when there is one: on a shared machine the
        # wall-clock ratio swings with other processes' load, CPU seconds per image do not.
        efficiency = min(inception.worst_cpu_time or inception.worst, 1.0)
        save_measured({"pipeline_efficiency": efficiency, "node_images_per_s_here": inception.decoded_images_per_s})
    print("\n".join(lines), flush=True)
    return lines


if __name__ == "__main__":
    main()
