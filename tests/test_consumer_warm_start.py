"""A consumer loads and warms its model before it takes its first batch.

The stories use a model-free task that records when it was warmed (so they need no TensorFlow),
real runs enqueued by the producer (their manifests name the task and model), and the real
consumer on the embedded backend and on Azurite; one story warms a real Keras model named by
the `model` setting.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from consumer.runner import Consumer
from consumer.tasks import TaskCache
from consumer.tasks.base import TaskContext
from consumer.tasks.examples import SleepTask
from consumer.warmup import pending_manifests, warm_up
from producer.enqueue import EnqueueRequest, enqueue
from tests.support.images import stage_folder, write_sample_images
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store


class WarmRecordingTask(SleepTask):
    """The example task, recording each warm-up: (model, batch size, when)."""

    warmed: ClassVar[list[tuple[str | None, int, datetime]]] = []

    @classmethod
    def load(cls, context: TaskContext, model: str | None, labels: str | None) -> WarmRecordingTask:
        task = cls()
        task.model_uri = model
        return task

    def __init__(self) -> None:
        super().__init__()
        self.model_uri: str | None = None

    def warm(self, batch_size: int) -> None:
        WarmRecordingTask.warmed.append((self.model_uri, batch_size, datetime.now(UTC)))


RECORDING = f"{__name__}:WarmRecordingTask"


@pytest.fixture(autouse=True)
def _fresh_record() -> None:
    WarmRecordingTask.warmed.clear()


def enqueue_run(settings: Settings, folder: Path, run_id: str, model: Path, count: int = 5) -> None:
    write_sample_images(folder, count, (32, 24))
    source = stage_folder(settings, folder)
    enqueue(settings, EnqueueRequest(source=source, run_id=run_id, task=RECORDING, model=str(model)),
            progress_bar=False)  # fmt: skip


def a_model_file(tmp_path: Path, name: str = "model.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(b"the recording task never reads it")
    return path


def test_the_model_of_a_pending_run_is_warmed_before_the_first_batch_is_taken(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a run of 5 images in batches of 2 waiting on the queue, its manifest naming the model
    settings = settings.model_copy(update={"batch_size": 2, "idle_exit_s": 0.5})
    model = a_model_file(tmp_path)
    enqueue_run(settings, tmp_path / "images", "r1", model)

    # When a fresh consumer drains the queue
    consumer = Consumer(settings, "w1", poll_s=0.05)
    consumer.run()
    assert consumer.error is None

    # Then the run's task was warmed once, at the run's batch size, before the first dequeue
    [(warmed_model, batch_size, warmed_at)] = WarmRecordingTask.warmed
    assert warmed_model == str(model) and batch_size == 2
    records = RunStore(open_result_store(settings)).read_batch_records("r1")
    assert len(records) == 3
    assert warmed_at < min(r.dequeued_at for r in records)


def test_only_runs_of_this_queue_with_batches_left_are_warmed(settings: Settings, tmp_path: Path) -> None:
    # Given a finished run, a run on another queue and a pending run, each with its own model
    done_model, other_model, pending_model = (a_model_file(tmp_path, f"{n}.bin") for n in ("done", "other", "pending"))
    enqueue_run(settings, tmp_path / "done", "done", done_model, count=2)
    Consumer(settings.model_copy(update={"idle_exit_s": 0.3}), "w0", poll_s=0.05).run()
    other_queue = settings.model_copy(update={"queue": settings.queue + "-b"})
    enqueue_run(other_queue, tmp_path / "other", "other", other_model, count=2)
    enqueue_run(settings, tmp_path / "pending", "pending", pending_model, count=2)
    WarmRecordingTask.warmed.clear()
    runs = RunStore(open_result_store(settings))

    # When a consumer of the first queue warms up
    assert [m.run_id for m in pending_manifests(settings, runs)] == ["pending"]
    warmed = warm_up(settings, TaskCache(settings), runs, threading.Event())

    # Then only the pending run's model was warmed
    assert warmed == 1
    assert [m for m, _, _ in WarmRecordingTask.warmed] == [str(pending_model)]


@pytest.mark.embedded
def test_a_stop_before_or_during_warm_up_warms_nothing_more(tmp_path: Path) -> None:
    from workpool.settings import load_settings

    # Given two pending runs with different models
    settings = load_settings(home=tmp_path / "home", queue="warm-stop")
    for name in ("a", "b"):
        enqueue_run(settings, tmp_path / name, name, a_model_file(tmp_path, f"{name}.bin"), count=1)
    runs = RunStore(open_result_store(settings))

    # When the stop event is already set, nothing is loaded or warmed
    stop = threading.Event()
    stop.set()
    assert warm_up(settings, TaskCache(settings), runs, stop) == 0
    assert WarmRecordingTask.warmed == []

    # And when it is set while the first model warms, the second is not started
    class StopWhileWarming(WarmRecordingTask):
        def warm(self, batch_size: int) -> None:
            super().warm(batch_size)
            stop.set()

    stop.clear()
    tasks = TaskCache(settings)
    tasks.get = lambda task, model, labels: StopWhileWarming.load(tasks.context, model, labels)  # type: ignore[method-assign]
    assert warm_up(settings, tasks, runs, stop) == 1
    assert len(WarmRecordingTask.warmed) == 1


@pytest.mark.embedded
@pytest.mark.integration  # the consumer tries to load the model files with TensorFlow
def test_a_model_that_cannot_be_loaded_is_left_to_its_batches(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from workpool.settings import load_settings

    # Given a pending classification run whose model file was deleted after enqueueing, and a
    # model setting naming a file that is not a model
    settings = load_settings(home=tmp_path / "home", queue="warm-broken", model=str(a_model_file(tmp_path, "x.keras")))
    model = tmp_path / "gone.keras"
    model.write_bytes(b"")
    write_sample_images(tmp_path / "images", 1, (32, 24))
    enqueue(settings, EnqueueRequest(source=str(tmp_path / "images"), run_id="r1", model=str(model)),
            progress_bar=False)  # fmt: skip
    model.unlink()

    # When a consumer warms up
    warmed = warm_up(settings, TaskCache(settings), RunStore(open_result_store(settings)), threading.Event())

    # Then nothing is warmed, each failure is logged with its model, and nothing is raised
    assert warmed == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("x.keras" in w for w in warnings) and any("gone.keras" in w and "not found" in w for w in warnings)


@pytest.mark.embedded
@pytest.mark.slow
def test_the_model_setting_loads_and_compiles_the_model_at_the_batch_size(tmp_path: Path) -> None:
    from tests.support.models import save_tiny_classifier
    from workpool.settings import load_settings

    # Given the `model` setting naming a Keras classifier and a batch size of 8, and no runs
    path = save_tiny_classifier(tmp_path / "models")
    settings = load_settings(home=tmp_path / "home", queue="warm-setting", model=str(path), batch_size=8)
    tasks = TaskCache(settings)

    # When the consumer warms up
    warmed = warm_up(settings, tasks, RunStore(open_result_store(settings)), threading.Event())

    # Then the model is loaded (cached for the batches) and its scoring call ran at batch 8
    assert warmed == 1
    loaded: Any = tasks.context.models.get(str(path))
    assert loaded.batch_size == 8
    assert "raw" in loaded._scorers  # the family's mode: an unknown family scores raw pixels
