"""The GPU-ready scoring path, checked on CPU: mixed precision, XLA, and no TensorFlow in the pipeline.

- `--precision mixed` really rebuilds a saved float32 model in float16 compute (a global policy
  set before loading would change nothing: saved layers pin their dtype), with scores close to
  float32 ones; the output layer stays float32.
- `--xla` gives the same scores as the plain traced call.
- The image pipeline (decode, preprocessing, prefetch, worker) imports no framework at all, and
  the same `.keras` file scores through the consumer's task with `KERAS_BACKEND=jax` while
  TensorFlow cannot be imported (skipped where JAX is not installed; JAX is not a dependency).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from consumer.images import decode_image
from consumer.models import load_model
from consumer.tasks import TaskCache
from workpool.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_MODULES = [
    "consumer.images",
    "consumer.preprocessing",
    "consumer.pipeline",
    "consumer.worker",
    "consumer.runner",
    "consumer.tasks.classification",
    "consumer.tasks.examples",
]

# Makes `import tensorflow` fail, as on a machine where only JAX is installed.
NO_TENSORFLOW = """
import importlib.abc, sys
class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("tensorflow is blocked for this test")
        return None
sys.meta_path.insert(0, _NoTensorFlow())
"""

SCORE_WITH_TASK = """
import json, sys
from consumer.images import decode_image
from consumer.tasks import TaskCache
from workpool.settings import load_settings
model, image, home = sys.argv[1:4]
task = TaskCache(load_settings(home=home)).get("classification", model, None)
batch = task.preprocess(decode_image(open(image, "rb").read(), task.input_size))[None]
import keras
print(json.dumps({"backend": keras.backend.backend(), "tensorflow": "tensorflow" in sys.modules,
                  "scores": task.predict(batch).tolist()}))
"""


def tiny_model(path: Path) -> Path:
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    # Random weights of a useful size, so the scores differ between classes.
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    # BatchNormalization's moving variance must stay positive.
    model.layers[2].moving_variance.assign(np.ones(8, np.float32))
    model.save(path)
    return path


def jpeg(path: Path) -> Path:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path, format="JPEG")
    return path


def batch() -> Any:
    return np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "home")


def test_the_image_pipeline_imports_no_framework() -> None:
    # Given a process with the JAX backend selected
    code = "import sys\n" + "".join(f"import {m}\n" for m in PIPELINE_MODULES)
    code += "print(sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules))"
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    # When the decode, preprocessing, prefetch and worker modules are imported
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    # Then none of them pulled in a framework: the model call is the only place one lives
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_mixed_precision_rebuilds_the_saved_model_and_scores_close_to_float32(tmp_path: Path) -> None:
    # Given a model saved in float32
    path = tiny_model(tmp_path / "tiny.keras")
    # When it is loaded with --precision float32 and with --precision mixed
    plain = load_model(path, str(path), load_settings(home=tmp_path / "h"))
    mixed = load_model(path, str(path), load_settings(home=tmp_path / "h", precision="mixed"))
    # Then the mixed one computes in float16 except for its float32 output layer
    import keras

    from consumer.models import with_mixed_precision

    rebuilt = with_mixed_precision(keras.saving.load_model(path))
    policies = {layer.name: layer.dtype_policy.name for layer in rebuilt.layers}
    assert policies["predictions"] == "float32"
    assert {policies[n] for n in policies if n not in ("predictions", rebuilt.layers[0].name)} == {"mixed_float16"}
    # And its scores are float32 probabilities close to the float32 model's
    a, b = np.asarray(plain(batch())), np.asarray(mixed(batch()))
    assert b.dtype == np.float32
    np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(a, b, atol=2e-2)
    assert (a.argmax(axis=1) == b.argmax(axis=1)).all()


def test_xla_scores_equal_the_plain_call(tmp_path: Path) -> None:
    path = tiny_model(tmp_path / "tiny.keras")
    plain = load_model(path, str(path), load_settings(home=tmp_path / "h"))
    compiled = load_model(path, str(path), load_settings(home=tmp_path / "h", xla=True))
    np.testing.assert_allclose(np.asarray(plain(batch())), np.asarray(compiled(batch())), rtol=1e-5, atol=1e-6)


def test_decode_threads_default_to_the_machine(home: Settings) -> None:
    from consumer.pipeline import Preparer

    preparer = Preparer(home, TaskCache(home))
    try:
        assert preparer.decode_pool._max_workers == (os.cpu_count() or 1)
    finally:
        preparer.close()


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed (not a dependency)")
def test_the_same_keras_file_scores_with_jax_and_no_tensorflow(tmp_path: Path) -> None:
    # Given a .keras model and a JPEG, scored by the consumer's task on the TensorFlow backend
    model, image = tiny_model(tmp_path / "tiny.keras"), jpeg(tmp_path / "one.jpg")
    task = TaskCache(load_settings(home=tmp_path / "h")).get("classification", str(model), None)
    pixels = decode_image(image.read_bytes(), task.input_size)
    expected = task.predict(task.preprocess(pixels)[None])
    # When the same file goes through the same task with KERAS_BACKEND=jax and TensorFlow blocked
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    script = NO_TENSORFLOW + SCORE_WITH_TASK
    args = [sys.executable, "-c", script, str(model), str(image), str(tmp_path / "jax-home")]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    # Then it runs on JAX without TensorFlow and gives the same scores
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    assert result["tensorflow"] is False
    np.testing.assert_allclose(np.asarray(result["scores"]), expected, rtol=1e-4, atol=1e-6)
