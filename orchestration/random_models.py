"""Random-weight Keras models of known architectures, for throughput work.

No pretrained weights can be fetched in every environment (and none are needed to measure
speed): `build_model("inceptionv3", folder)` saves `keras.applications.InceptionV3(weights=None)`
as a `.keras` file the consumer loads like any other. Built once per folder, then reused.
"""

from __future__ import annotations

from pathlib import Path

from workpool.errors import UsageError

ARCHITECTURES = {
    "inceptionv3": "InceptionV3",
    "vgg16": "VGG16",
    "resnet50": "ResNet50",
    "mobilenetv2": "MobileNetV2",
}


def build_model(arch: str, folder: Path) -> Path:
    """The path of a saved random-weight `arch` model under `folder` (built on first use)."""
    if arch not in ARCHITECTURES:
        raise UsageError(f"--arch {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    path = (folder / f"{arch}-random.keras").absolute()
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    import keras  # heavy: only when a model has to be built

    model = getattr(keras.applications, ARCHITECTURES[arch])(weights=None)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)
    return path
