"""Keras models for tests and benchmarks, built in code and saved as real model files.

No pretrained weights are available offline, so the ImageNet architectures are built with
`weights=None` (random weights): the numbers differ from the published models but the graph,
the input sizes and the preprocessing conventions are the real ones.

    save_identity_model(dir)      output = per-channel means of the input: shows rows map to images
    save_tiny_classifier(dir)     a few thousand parameters, 10 classes, 32×32 input
    save_cloth_model(dir)         two heads (softmax category, sigmoid attributes) + its heads.json
    save_inception_v3(dir)        InceptionV3, 1000 classes (299×299 by default)
    save_vgg16(dir)               VGG16, 1000 classes (224×224 by default)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLOTH_HEADS: dict[str, Any] = {
    "heads": [
        {"name": "category", "activation": "softmax", "labels": ["dress", "shirt", "coat", "skirt"], "top_k": 2},
        {"name": "attributes", "activation": "sigmoid", "labels": ["striped", "floral", "plain"], "threshold": 0.3},
    ]
}


def _keras() -> Any:
    import keras

    return keras


def save_identity_model(folder: Path, size: tuple[int, int] = (16, 16), name: str = "identity.keras") -> Path:
    """Outputs the mean of each input channel. With `"preprocess": "raw"` those are pixel means."""
    keras = _keras()
    inputs = keras.Input((*size, 3))
    outputs = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, outputs, name="identity")
    return _save(model, folder / name)


def save_tiny_classifier(folder: Path, classes: int = 10, size: tuple[int, int] = (32, 32), seed: int = 1) -> Path:
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return _save(keras.Model(inputs, outputs, name="tiny_classifier"), folder / "tiny.keras")


def save_cloth_model(folder: Path, size: tuple[int, int] = (32, 32), seed: int = 2) -> Path:
    """A two-head attribute model, saved with its head spec beside it (`cloth.keras.heads.json`)."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    heads = CLOTH_HEADS["heads"]
    category = keras.layers.Dense(len(heads[0]["labels"]), activation="softmax", name="category")(x)
    attributes = keras.layers.Dense(len(heads[1]["labels"]), activation="sigmoid", name="attributes")(x)
    path = _save(keras.Model(inputs, [category, attributes], name="cloth"), folder / "cloth.keras")
    (folder / "cloth.keras.heads.json").write_text(json.dumps(CLOTH_HEADS, indent=2))
    return path


def save_inception_v3(folder: Path, size: tuple[int, int] = (299, 299), seed: int = 3, sharpen: float = 1.0) -> Path:
    """InceptionV3 (75×75 is the smallest input Keras allows). See `sharpen_classifier`."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    model = keras.applications.InceptionV3(weights=None, input_shape=(*size, 3), classes=1000)
    sharpen_classifier(model, sharpen)
    return _save(model, folder / f"inception_v3_{size[0]}.keras")


def save_vgg16(folder: Path, size: tuple[int, int] = (224, 224), seed: int = 4, sharpen: float = 1.0) -> Path:
    """VGG16 (32×32 is the smallest input Keras allows; its dense layers stay ~119M parameters)."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    model = keras.applications.VGG16(weights=None, input_shape=(*size, 3), classes=1000)
    sharpen_classifier(model, sharpen)
    return _save(model, folder / f"vgg16_{size[0]}.keras")


def sharpen_classifier(model: Any, factor: float) -> None:
    """Scale the last layer's kernel: with random weights the softmax is nearly uniform (every
    score ≈ 0.001), which would let a test comparing scores pass even with rows mixed up."""
    if factor != 1.0:
        last = model.layers[-1]
        last.kernel.assign(last.kernel.numpy() * factor)


def _save(model: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path
