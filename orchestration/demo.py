"""`make demo`: the main job, end to end on this machine with the embedded default.

1. generate sample JPEGs (no data can be downloaded here) under `<home>/demo/images`;
2. build a random-weight MobileNetV2 (an ImageNet-shaped classifier; no pretrained weights);
3. `producer enqueue` them as a new run;
4. `orchestration launch --nodes 2 --wait`: two local consumer nodes drain the queue, then stop;
5. print the drain report and write the results CSV (`orchestration results`).

Sized to finish well within two minutes on two CPU cores. Set WORKPOOL_* variables (or
AZURE_STORAGE_CONNECTION_STRING) to run the same job on Azure Storage instead.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from orchestration.backends.local import LocalLauncher
from orchestration.export import export_results
from orchestration.pool import launch_until_drained
from orchestration.random_models import build_model
from orchestration.samples import write_samples
from workpool.cli import settings_for
from workpool.runs import RunStore
from workpool.storage import open_result_store

IMAGES = 96
BATCH_SIZE = 8
NODES = 2
ARCH = "mobilenetv2"


def say(line: str) -> None:
    print(f"demo: {line}", flush=True)


def main() -> int:
    from producer.enqueue import EnqueueRequest, enqueue

    settings = settings_for(None, "WARNING", batch_size=BATCH_SIZE)
    folder = settings.home.absolute() / "demo"
    say(f"writing {IMAGES} sample images to {folder / 'images'}")
    write_samples(folder / "images", IMAGES)
    say(f"building a random-weight {ARCH} model (first run only)")
    model = build_model(ARCH, settings.home / "models")
    run_id = "demo-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    summary = enqueue(settings, EnqueueRequest(source=str(folder / "images"), run_id=run_id, model=str(model)))
    say(f"enqueued run {run_id}: {summary.images} images in {summary.batches} batches on queue {settings.queue}")
    [report] = launch_until_drained(settings, LocalLauncher(settings), NODES, [run_id], say=say)
    print(report.render())
    out = folder / f"results-{run_id}.csv"
    exported = export_results(RunStore(open_result_store(settings)), run_id, out)
    say(f"wrote {exported.rows} result rows ({exported.ok} ok, {exported.failed} error) to {out}")
    say(f"next: `python -m orchestration status --run {run_id}` or `... results --run {run_id} --out results.parquet`")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
