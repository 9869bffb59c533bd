"""Model safety: a model whose file carries Python code is refused unless the user opts in.

The models here (`.keras` and legacy `.h5`) hold a Keras `Lambda` layer whose function writes a
marker file: proof, from outside the process, of whether the file's code ever ran. Run through
the consumer CLI, the refused batches must go to poison on their first delivery with a reason
that says how to opt in (no retry can change the answer), the consumer must carry on, and the
marker must not exist. After `--allow-unsafe-models` and `producer requeue --failed`, the same
batches score, and the marker shows the code ran. (WORKPOOL_ALLOW_UNSAFE_MODELS is the same
switch as a setting; the consumer's own tests load it that way.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.faults_pool import check_every_image_once, enqueue_run, figures_line, run_store, unique_images
from workpool.queue import PoisonRecord, open_queue
from workpool.settings import load_settings

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.embedded]

QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def save_code_carrying_models(folder: Path, marker: Path) -> dict[str, Path]:
    """A `.keras` and an `.h5` model with a Lambda layer that writes to `marker` when it runs."""
    import keras

    folder.mkdir(parents=True, exist_ok=True)
    inputs = keras.Input((16, 16, 3))
    # The marker's path is a constant inside the function's own code, which the file carries.
    code = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), t)[1]")
    touched = keras.layers.Lambda(code)(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(touched), name="code_carrying")
    paths = {kind: folder / f"code_carrying.{kind}" for kind in ("keras", "h5")}
    for path in paths.values():
        model.save(path)
    marker.unlink()  # building the model ran the lambda once, here: start from nothing
    return paths


def test_a_model_carrying_python_code_is_refused_unless_allowed(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", queue="unsafe")
    marker = tmp_path / "code-ran.txt"
    models = save_code_carrying_models(tmp_path / "models", marker)
    names = unique_images(tmp_path / "images", 4)
    for kind, path in models.items():
        # The producer refuses such a model unless this setting vouches for it (it never runs its code)
        enqueue_run(settings, str(tmp_path / "images"), f"run-{kind}", "--model", str(path), "--batch-size", "2",
                    env={"WORKPOOL_ALLOW_UNSAFE_MODELS": "true"})  # fmt: skip

    # When a consumer with default settings (5 attempts) drains the queue
    refused = run_cli("consumer", settings, "run", "--idle-exit-s", "2", "--worker-id", "safe", env=QUIET,
                      timeout_s=180)  # fmt: skip

    # Then it exits normally having scored nothing, and no code from the files ran
    assert refused.code == 0, refused.stdout + refused.stderr
    assert refused.stdout.strip().splitlines()[-1].startswith("Worker safe Processed 0 images")
    assert "Traceback" not in refused.stderr
    assert not marker.exists()
    # and every batch went to poison on its first delivery, saying how to opt in
    with open_queue(settings) as queue:
        assert queue.depth().messages == 0
        held = queue.poison().receive(32, visibility_timeout_s=30)
        records = [PoisonRecord.decode(m.body) for m in held]
        for message in held:
            queue.poison().release(message)  # looked at, left for `requeue --failed`
    assert len(records) == 4
    assert {r.attempts for r in records} == {1}
    assert all("--allow-unsafe-models" in r.reason and "Lambda" in r.reason for r in records)
    runs = run_store(settings)
    assert {p.batch_id for kind in models for p in runs.read_poison(f"run-{kind}")} == {"b000000", "b000001"}

    # When the user opts in and requeues them
    for kind in models:
        assert run_cli("producer", settings, "requeue", "--run", f"run-{kind}", "--failed").code == 0
    allowed = run_cli("consumer", settings, "run", "--idle-exit-s", "2", "--worker-id", "trusting",
                      "--allow-unsafe-models", env=QUIET, timeout_s=180)  # fmt: skip
    assert allowed.code == 0, allowed.stdout + allowed.stderr

    # Then both models loaded and scored every image, and their code did run
    assert allowed.stdout.strip().splitlines()[-1].startswith("Worker trusting Processed 8 images")
    assert marker.exists()
    for kind in models:
        rows = check_every_image_once(settings, f"run-{kind}", names, tmp_path / f"{kind}.jsonl")
        assert rows.ok == len(names)

    figures_line(
        "model-safety[embedded]",
        models="keras+h5",
        batches_refused=len(records),
        refused_attempts=max(r.attempts for r in records),
        code_ran_when_refused=False,
        images_scored_after_opt_in=len(names) * len(models),
    )
