"""uint8 pixels go to the device; the family's preprocessing runs there, inside the model call.

`LoadedModel.score(pixels, mode)` must give the scores of the reference path (Keras'
`preprocess_input` on the host, then the model) for every mode and every model format, also
compiled with XLA, where a short batch is padded to the warmed shape and the padding dropped.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consumer.models import LoadedModel, load_model, wrap_keras_model
from consumer.preprocessing import MODES, preprocess
from workpool.settings import load_settings

pytestmark = pytest.mark.embedded

SIZE = (16, 16)


def probe_model() -> Any:
    """Convolution, pooling and a softmax: scores depend on every pixel and channel order."""
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(6, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="probe")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("probe")
    model = probe_model()
    model.save(folder / "probe.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # HDF5 is a legacy format: that is the point
        model.save(folder / "probe.h5")
        model.export(folder / "probe_savedmodel", format="tf_saved_model", verbose=False)
    return {"keras": folder / "probe.keras", "h5": folder / "probe.h5", "savedmodel": folder / "probe_savedmodel"}


def reference(model: Any, pixels: np.ndarray, mode: str) -> np.ndarray:
    """Keras' own preprocessing for the family, on the host, then the model."""
    from keras.applications import imagenet_utils

    x = pixels.astype("float32")
    if mode in ("tf", "caffe", "torch"):
        x = imagenet_utils.preprocess_input(x, mode=mode)
    elif mode == "unit":
        x = x / 255.0
    return np.asarray(model(x, training=False))


def single(outputs: Any) -> np.ndarray:
    return np.asarray(next(iter(outputs.values())) if isinstance(outputs, dict) else outputs)


def pixels(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("kind", ["keras", "h5", "savedmodel"])
def test_scores_from_uint8_equal_the_reference_preprocess_input_path(
    kind: str, xla: bool, model_files: dict[str, Path], tmp_path: Path
) -> None:
    import keras

    # Given the model file, loaded as the consumer loads it, and warmed at batch 8
    path = model_files[kind]
    # (a SavedModel runs its graph's code: loaded only with the opt-in, docs/security.md)
    loaded = load_model(
        path, str(path), load_settings(home=tmp_path, xla=xla, allow_unsafe_models=kind == "savedmodel")
    )
    loaded.warm(8, "tf", SIZE)
    original = keras.saving.load_model(model_files["keras"])
    batch = pixels(5)  # a short batch: padded to 8 where shapes are compiled (XLA)

    # When it scores uint8 pixels in every mode
    for mode in MODES:
        got = single(loaded.score(batch, mode))  # type: ignore[arg-type]

        # Then the scores are the reference path's, one row per image
        want = reference(original, batch, mode)
        assert got.shape == want.shape == (5, 6)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"mode {mode}")


def test_the_numpy_reference_equals_keras_preprocess_input_for_every_mode() -> None:
    from keras.applications import imagenet_utils

    batch = pixels(2, seed=3)
    for mode in MODES:
        want = batch.astype("float32")
        if mode in ("tf", "caffe", "torch"):
            want = imagenet_utils.preprocess_input(want, mode=mode)
        elif mode == "unit":
            want = want / 255.0
        np.testing.assert_allclose(preprocess(batch, mode), want, rtol=0, atol=1e-5)  # type: ignore[arg-type]


def counting_model() -> tuple[Any, list[int]]:
    """A model whose Python `call` runs once per trace: the list grows by one per trace."""
    import keras

    traces: list[int] = []

    class Counting(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            traces.append(1)
            return x

    inputs = keras.Input((*SIZE, 3))
    x = Counting()(inputs)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, outputs, name="counting")
    traces.clear()  # building the functional model called it once
    return model, traces


@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
def test_after_warm_up_no_batch_size_traces_the_call_again(xla: bool) -> None:
    # Given a model warmed at batch 8
    model, traces = counting_model()
    loaded: LoadedModel = wrap_keras_model(model, "mem://counting", load_settings(xla=xla))
    loaded.warm(8, "raw")
    after_warm_up = len(traces)
    assert after_warm_up >= 1

    # When it scores full batches, a short last batch, and a one-image batch
    outputs = [loaded.score(pixels(n, seed=n), "raw") for n in (8, 3, 8, 1)]

    # Then nothing was traced again, and every batch got exactly its own rows back
    assert len(traces) == after_warm_up
    assert [single(o).shape[0] for o in outputs] == [8, 3, 8, 1]
    np.testing.assert_allclose(single(outputs[1]), pixels(3, seed=3).mean(axis=(1, 2)), rtol=1e-5)
    # And with XLA the short batches were padded to the warmed shape, not compiled anew
    assert loaded.compiles_per_shape is xla
    assert loaded.batch_size == 8
