"""A queue message cannot reach outside the work, and a hostile one never stops a consumer.

Each story runs the real `consumer run` in a child process against runs recorded the way an
attacker who can write to the queue and to the result container would record them (a manifest,
then the messages): every boundary of docs/security.md is crossed for real (a module that writes a
marker when imported, a `__main__` module, a module raising `SystemExit` or killing the process on
import, a FIFO and an oversized file among the images, labels and sources outside what the
consumer may read) and each is refused with its reason while the legitimate run is scored whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.cli import ROOT, Outcome, run_cli
from tests.support.faults_pool import check_every_image_once, enqueue_run, figures_line, run_store, unique_images
from tests.support.images import stage_folder
from tests.support.messages import record_runs
from workpool.messages import BatchMessage
from workpool.queue import PoisonRecord, open_queue
from workpool.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SLEEP_TASK = "consumer.tasks.examples:SleepTask"
IMAGE_CAP = 100_000


def hostile_modules(folder: Path, marker: Path) -> Path:
    """Task modules no operator allowed, or allowed but hostile, in a folder put on the consumer's path."""
    folder.mkdir(parents=True)
    (folder / "evil_tasks.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "from consumer.tasks.examples import SleepTask as Task\n"
    )
    (folder / "exiting_tasks.py").write_text("raise SystemExit(3)\n")
    (folder / "crashing_tasks.py").write_text("import os\nos._exit(3)\n")
    return folder


def consumer_env(pylib: Path, **settings: str) -> dict[str, str]:
    env = {"WORKPOOL_EXAMPLE_SLEEP_S": "0", "PYTHONPATH": f"{pylib}{os.pathsep}{ROOT}"}
    env.update({f"WORKPOOL_{name.upper()}": value for name, value in settings.items()})
    return env


def poison_records(settings: Settings) -> dict[str, PoisonRecord]:
    """Every dead-lettered message, by its run id."""
    records: dict[str, PoisonRecord] = {}
    with open_queue(settings) as queue:
        while received := queue.poison().receive(32, visibility_timeout_s=60):
            for message in received:
                record = PoisonRecord.decode(message.body)
                records[json.loads(record.body)["run_id"]] = record
    return records


def test_hostile_messages_are_refused_with_their_reason_and_the_run_completes(
    settings: Settings, backend: str, tmp_path: Path
) -> None:
    # Given a legitimate run whose folder also holds an image over the size cap and (on disk) a FIFO,
    # which a reader without the regular-file check would wait on forever
    names = unique_images(tmp_path / "run", 8)
    (tmp_path / "run" / "zz_big.png").write_bytes(b"\x89PNG" + b"\0" * IMAGE_CAP)
    names.append("zz_big.png")
    if backend == "embedded":
        os.mkfifo(tmp_path / "run" / "zz_fifo.png")
        names.append("zz_fifo.png")
    source = stage_folder(settings, tmp_path / "run", container=settings.queue + "-src")
    enqueue_run(settings, source, "legit", "--task", SLEEP_TASK, "--batch-size", "4")
    # and, outside what the consumer may read, a labels file holding a secret
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("the secret\n")
    outside = stage_folder(settings, tmp_path / "outside", container=settings.queue + "-other")
    marker = tmp_path / "imported.txt"
    pylib = hostile_modules(tmp_path / "pylib", marker)

    # When runs written by someone who can write to the queue and the result container name
    def run(run_id: str, **fields: str) -> BatchMessage:
        values = {"task": SLEEP_TASK, "source": source, "images": ["img_00000.png"], **fields}
        return BatchMessage(run_id=run_id, batch_id="b000000", **values)  # type: ignore[arg-type]

    embedded = backend == "embedded"
    hostile = {
        "evil-import": (run("evil-import", task="evil_tasks:Task"), "not one this consumer may import"),
        "main-module": (run("main-module", task="workpool.__main__:Settings"), "__main__ module runs a command"),
        "exit-on-import": (run("exit-on-import", task="exiting_tasks:Task"), "SystemExit raised while preparing"),
        "labels-outside": (run("labels-outside", labels=f"{outside}/secret.txt"),
                           "not under an allowed folder" if embedded else "is not one this consumer reads"),
        "dev-source": (run("dev-source", source="/dev", images=["zero"]),
                       "not under an allowed folder" if embedded else "reads no local paths"),
    }  # fmt: skip
    record_runs(settings, *(message for message, _ in hostile.values()))
    with open_queue(settings) as queue:
        queue.send([message.encode() for message, _ in hostile.values()])

    # and one consumer drains the queue: `workpool` and `exiting_tasks` allowed (not `evil_tasks`),
    # local paths only under the run's folder (embedded) or none at all (as on cluster nodes)
    roots = str(tmp_path / "run") if backend == "embedded" else "none"
    env = consumer_env(pylib, task_modules="tests,workpool,exiting_tasks", local_roots=roots,
                       max_image_bytes=str(IMAGE_CAP))  # fmt: skip
    out = run_cli("consumer", settings, "run", "--idle-exit-s", "6", "--workers", "1", "--worker-id", "w-sec",
                  "--max-attempts", "2", env=env, timeout_s=180)  # fmt: skip

    # Then it kept going to the end
    assert out.code == 0, out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith(f"Worker w-sec Processed {len(names)} images, took ")
    # and each hostile run went to poison with its reason: at once, or (a task's own failure) after the attempts
    records = poison_records(settings)
    assert set(records) == set(hostile)
    for run_id, (_, reason) in hostile.items():
        assert reason in records[run_id].reason, f"{run_id}: {records[run_id].reason}"
        assert records[run_id].attempts == (2 if run_id == "exit-on-import" else 1), run_id
    assert "failed 2 times" in records["exit-on-import"].reason
    assert run_store(settings).read_poison("exit-on-import")[0].attempts == 2
    # and no module outside the allowed ones was imported
    assert not marker.exists()
    # and the legitimate run is complete: the FIFO and the oversized file are error rows with their reason
    rows = check_every_image_once(settings, "legit", names, tmp_path / "legit.jsonl")
    runs = run_store(settings)
    by_name = {row.image: row for b in runs.result_batch_ids("legit") for row in runs.read_results("legit", b)}
    assert by_name["zz_big.png"].status == "error" and "too large" in (by_name["zz_big.png"].error or "")
    if backend == "embedded":
        assert "not a regular file" in (by_name["zz_fifo.png"].error or "")
    assert rows.errors == len(names) - 8 and rows.ok == 8
    figures_line(f"security-messages[{backend}]", hostile_runs=len(hostile), poisoned=len(records), **rows.figures())


@pytest.mark.embedded
def test_a_message_whose_preparing_kills_the_consumer_is_poisoned_before_it_is_prepared_again(
    tmp_path: Path,
) -> None:
    from workpool.settings import load_settings

    settings = load_settings(home=tmp_path / "home", queue="crash")
    # Given a legitimate run, and a run whose (allowed) task module kills the process when imported
    names = unique_images(tmp_path / "run", 4)
    enqueue_run(settings, str(tmp_path / "run"), "legit", "--task", SLEEP_TASK, "--batch-size", "2")
    pylib = hostile_modules(tmp_path / "pylib", tmp_path / "unused.txt")
    crash = BatchMessage(run_id="crash", batch_id="b000000", task="crashing_tasks:Task", source=str(tmp_path / "run"),
                         images=[names[0]])  # fmt: skip
    record_runs(settings, crash)
    with open_queue(settings) as queue:
        queue.send([crash.encode()])

    # When consumers (4 s leases, 2 attempts) are started one after another, as a supervisor would
    env = consumer_env(pylib, task_modules="tests,crashing_tasks")
    outcomes: list[Outcome] = []
    while not outcomes or outcomes[-1].code != 0:
        assert len(outcomes) < 6, [o.code for o in outcomes]
        outcomes.append(
            run_cli(
                "consumer",
                settings,
                "run",
                "--idle-exit-s",
                "6",
                "--workers",
                "1",
                "--visibility-timeout-s",
                "4",
                "--max-attempts",
                "2",
                "--prefetch-batches",
                "0",
                env=env,
                timeout_s=120,
            )
        )

    # Then the crashes stopped once the message had been delivered more than twice: the third
    # delivery was dead-lettered without importing the module again
    assert [o.code for o in outcomes[:-1]] == [3, 3], [(o.code, o.stderr[-500:]) for o in outcomes]
    poisoned = poison_records(settings)
    assert list(poisoned) == ["crash"], {k: (r.attempts, r.reason) for k, r in poisoned.items()}
    record = poisoned["crash"]
    assert record.attempts == 3 and "delivered 3 times" in record.reason
    assert [p.batch_id for p in run_store(settings).read_poison("crash")] == ["b000000"]
    # and every batch of the legitimate run was scored
    rows = check_every_image_once(settings, "legit", names, tmp_path / "legit.jsonl")
    assert rows.ok == len(names)
    figures_line("security-crash-on-prepare[embedded]", consumer_runs=len(outcomes), crash_attempts=record.attempts)


@pytest.mark.embedded
def test_warm_up_loads_nothing_a_run_may_not_read(tmp_path: Path) -> None:
    import threading

    from consumer.tasks import TaskCache
    from consumer.warmup import warm_up
    from tests.support.models import save_tiny_classifier
    from workpool.settings import load_settings

    # Given a pending run whose manifest names a model outside the folders local paths may come from
    settings = load_settings(home=tmp_path / "home", queue="warm", local_roots=str(tmp_path / "allowed"))
    model = save_tiny_classifier(tmp_path / "elsewhere")
    names = unique_images(tmp_path / "allowed" / "images", 1)
    record_runs(settings, BatchMessage(run_id="r1", batch_id="b1", task="classification", model=str(model),
                                       source=str(tmp_path / "allowed" / "images"), images=names))  # fmt: skip

    # When a consumer warms up
    tasks = TaskCache(settings)
    warmed = warm_up(settings, tasks, run_store(settings), threading.Event())

    # Then that model was not loaded ahead of its batches (which go to poison with the reason)
    assert warmed == 0
    assert not tasks.context.models._models
