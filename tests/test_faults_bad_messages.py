"""Bad messages, sent raw with the queue API, never stop a consumer and never read outside a run.

Among a legitimate run's batches the queue also carries bodies no producer would send: not JSON,
another schema version, fields missing, an image list over the batch limit, a run with no
manifest (sent by someone who can write to the queue only), names with '..', absolute or URL
names, and forged batches of the legitimate run that point at another container (Azure) or
folder (embedded) holding a tempting image. One `consumer run`
drains it all: every bad body goes to poison on its first delivery with its reason, the real
batches are scored, and no row anywhere comes from outside the run's source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli
from tests.support.faults_pool import check_every_image_once, enqueue_run, figures_line, run_store, unique_images
from tests.support.images import stage_folder
from workpool.errors import MessageTooLargeError
from workpool.queue import PoisonRecord, open_queue
from workpool.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SLEEP_TASK = "consumer.tasks.examples:SleepTask"


def body(**fields: Any) -> str:
    return json.dumps({"schema_version": 1, "task": SLEEP_TASK, **fields})


def test_bad_messages_go_to_poison_at_once_and_the_consumer_keeps_going(
    settings: Settings, backend: str, tmp_path: Path
) -> None:
    # Given a legitimate run of 12 images in batches of 4
    names = unique_images(tmp_path / "run", 12)
    if backend == "embedded":
        # (and on disk, a link inside the run's folder pointing at a file outside it)
        os.symlink(tmp_path / "outside" / "secret.png", tmp_path / "run" / "zz_link.png")
        names.append("zz_link.png")
    source = stage_folder(settings, tmp_path / "run", container=settings.queue + "-src")
    enqueue_run(settings, source, "legit", "--task", SLEEP_TASK, "--batch-size", "4")
    # and, outside the run's source, a folder or another container holding a tempting image
    unique_images(tmp_path / "outside", 1, prefix="secret")
    (tmp_path / "outside" / "secret00000.png").rename(tmp_path / "outside" / "secret.png")
    other = stage_folder(settings, tmp_path / "outside", container=settings.queue + "-other")
    legit_source = run_store(settings).read_manifest("legit").source

    # When these bodies are put on the same queue with the plain queue API
    bad = {
        "not json": ("this is {not json", "not JSON"),
        "json array": ('["legit", "b1"]', "expected an object"),
        "schema 2": (body(schema_version=2, run_id="legit", batch_id="x1", source=source, images=["a.png"]),
                     "schema_version"),
        "missing fields": (json.dumps({"schema_version": 1, "run_id": "legit"}), "Field required"),
        "oversized list": (body(run_id="legit", batch_id="x2", source=source,
                                images=[f"n{i}.png" for i in range(3000)]), "at most"),
        "no manifest": (body(run_id="handmade", batch_id="x3", source=source, images=["img_00000.png"]),
                        "has no manifest"),
        "task swapped": (body(run_id="legit", batch_id="b000002", source=legit_source,
                              images=[f"img_{i:05d}.png" for i in range(8, 12)],
                              task="consumer.tasks.examples:FailingTask"), "differs from the manifest"),
        "dot-dot": (body(run_id="legit", batch_id="x4", source=source, images=["../outside/secret.png"]), "'..'"),
        "deep dot-dot": (body(run_id="legit", batch_id="x5", source=source, images=["a/../../secret.png"]), "'..'"),
        "backslash dot-dot": (body(run_id="legit", batch_id="x6", source=source, images=["..\\secret.png"]), "'..'"),
        "absolute": (body(run_id="legit", batch_id="x7", source=source,
                          images=[str(tmp_path / "outside" / "secret.png")]), "absolute"),
        "drive letter": (body(run_id="legit", batch_id="x8", source=source, images=["C:\\secret.png"]), "absolute"),
        "url name": (body(run_id="legit", batch_id="x9", source=source,
                          images=[f"az://{settings.queue}-other/outside/secret.png"]), "URL"),
        "forged source": (body(run_id="legit", batch_id="b000000", source=other, images=["secret.png"]),
                          "manifest"),
        "forged images": (body(run_id="legit", batch_id="b000001", source=legit_source,
                               images=["img_00004.png", "../outside/secret.png"]), "'..'"),
        "unknown batch": (body(run_id="legit", batch_id="b999999", source=legit_source,
                               images=["img_00000.png"]), "manifest"),
        # just under 64 KiB, and twice that once escaped into a poison record
        "quotes near the limit": ('"' * 60_000, "not JSON"),
    }  # fmt: skip
    with open_queue(settings) as queue:
        queue.send([text for text, _ in bad.values()])
        # and a body over the queue's 64 KiB limit is refused by the queue itself, on both backends
        with pytest.raises(MessageTooLargeError):
            queue.send([body(run_id="legit", batch_id="x10", source=source, images=["é" * 40_000])])
        depth_before = queue.depth().messages

    # and one consumer drains the queue
    out = run_cli("consumer", settings, "run", "--idle-exit-s", "2", "--workers", "1", "--worker-id", "w-bad",
                  env={"WORKPOOL_EXAMPLE_SLEEP_S": "0"}, timeout_s=120)  # fmt: skip

    # Then it kept going to the end: exit 0, its summary line, no traceback
    assert out.code == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith(f"Worker w-bad Processed {len(names)} images, took ")
    assert "Traceback" not in out.stderr

    # and every bad body is in poison after one delivery, with its reason
    with open_queue(settings) as queue:
        assert queue.depth().messages == 0
        records = []
        while received := queue.poison().receive(32, visibility_timeout_s=60):
            records += [PoisonRecord.decode(m.body) for m in received]
    by_body = {r.body: r for r in records}
    assert len(records) == len(bad) == len(by_body)
    for what, (text, reason) in bad.items():
        assert text in by_body, f"{what}: not dead-lettered"
        assert by_body[text].attempts == 1, f"{what}: dead-lettered at once"
        assert reason in by_body[text].reason, f"{what}: {by_body[text].reason}"

    # and the legitimate run is complete, with no row from outside its source
    rows = check_every_image_once(settings, "legit", names, tmp_path / "legit.jsonl")
    runs = run_store(settings)
    all_rows = [row for b in runs.result_batch_ids("legit") for row in runs.read_results("legit", b)]
    assert "secret.png" not in {row.image for row in all_rows}
    assert runs.read_poison("legit") == [], "forged messages leave no poison report on the real run"
    if backend == "embedded":
        [link] = [row for row in all_rows if row.image == "zz_link.png"]
        assert link.status == "error" and link.error, "a link leaving the source is an error row, never read"
        assert rows.errors == 1 and rows.ok == len(names) - 1
    else:
        assert rows.ok == len(names)
    figures_line(
        f"bad-messages[{backend}]",
        messages_queued=depth_before,
        poisoned_at_once=sum(1 for r in records if r.attempts == 1),
        refused_by_send=1,
        legit_images=len(names),
        **rows.figures(),
    )
