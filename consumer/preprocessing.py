"""Turn decoded RGB pixels into a model's input, following the model family's convention.

Modes (the names Keras uses in `keras.applications.imagenet_utils.preprocess_input`):
- `tf`: scale to [-1, 1] (InceptionV3, Xception, MobileNet, ...);
- `caffe`: RGB→BGR, then subtract the ImageNet channel means, no scaling (VGG16/19, ResNet50);
- `torch`: scale to [0, 1], then normalise with the ImageNet mean and std (DenseNet);
- `unit`: scale to [0, 1];
- `raw`: pixels as float32 0..255, for models that rescale inside (EfficientNet, ConvNeXt,
  models with a `Rescaling` layer).

Two implementations of the same arithmetic: `preprocess` (numpy, on the host: the reference, and
what custom tasks may call in decode threads) and `on_device` (Keras ops, compiled into the model
call, so the host sends uint8 pixels and does no float arithmetic). Keras is imported only inside
`on_device`, so importing this module ties the pipeline to no framework.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

Mode = Literal["tf", "caffe", "torch", "unit", "raw"]
MODES: tuple[str, ...] = get_args(Mode)
Array = npt.NDArray[np.float32]

_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Keras application model names (`model.name`) → the preprocessing their weights were trained with.
_FAMILIES: dict[str, Mode] = {
    "inception_v3": "tf",
    "inception_resnet_v2": "tf",
    "xception": "tf",
    "mobilenet": "tf",
    "mobilenetv2": "tf",
    "nasnet": "tf",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "resnet50": "caffe",
    "resnet101": "caffe",
    "resnet152": "caffe",
    "densenet121": "torch",
    "densenet169": "torch",
    "densenet201": "torch",
}


def mode_for_model_name(name: str) -> Mode:
    """The family's mode, matched on the model's name; `raw` when the family is unknown."""
    key = name.lower()
    if key in _FAMILIES:
        return _FAMILIES[key]
    for family, mode in _FAMILIES.items():
        if key.startswith(family):
            return mode
    if key.startswith(("mobilenet", "inception")):
        return "tf"
    return "raw"


def preprocess(pixels: npt.NDArray[np.uint8], mode: Mode) -> Array:
    """uint8 (H, W, 3) RGB → float32 (H, W, 3) in the mode's convention."""
    x = pixels.astype(np.float32)
    if mode == "tf":
        return x / np.float32(127.5) - np.float32(1.0)
    if mode == "caffe":
        return x[..., ::-1] - _CAFFE_MEAN_BGR
    if mode == "torch":
        return (x / np.float32(255.0) - _TORCH_MEAN) / _TORCH_STD
    if mode == "unit":
        return x / np.float32(255.0)
    return x


def on_device(pixels: Any, mode: Mode) -> Any:
    """`preprocess` as Keras ops on a backend tensor (N, H, W, 3) of any dtype: float32 out."""
    from keras import ops

    x = ops.cast(pixels, "float32")
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR)
    if mode == "torch":
        return (x / 255.0 - ops.convert_to_tensor(_TORCH_MEAN)) / ops.convert_to_tensor(_TORCH_STD)
    if mode == "unit":
        return x / 255.0
    return x
