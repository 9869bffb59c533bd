"""Random-weight Keras models of known architectures, for throughput work.

No pretrained weights can be fetched in every environment (and none are needed to measure
speed): `build_model("inceptionv3", folder)` saves `keras.applications.InceptionV3(weights=None)`
as a `.keras` file the consumer loads like any other. Built once per folder, then reused.

The build runs in a child process: TensorFlow's start-up chatter stays out of the demo's and
the benchmark's output (it is shown only if the build fails), and the commands do not carry a
loaded TensorFlow around while they wait for the nodes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from workpool.errors import UsageError, WorkpoolError
from workpool.handoff import PROJECT_ROOT

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
    return build_in_child(["orchestration.tools.random_models", arch], path, f"a random-weight {arch} model")


def build_in_child(module_args: list[str], path: Path, what: str) -> Path:
    """Run `python -m <module_args> <path>` to save a model at `path`; its output shows only on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", *module_args, str(path)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        check=False,
    )
    if done.returncode != 0 or not path.exists():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise WorkpoolError(f"building {what} failed:\n{tail}")
    return path


def _save(arch: str, path: Path) -> None:
    import keras

    model = getattr(keras.applications, ARCHITECTURES[arch])(weights=None)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)  # never a half-written model under the final name


if __name__ == "__main__":
    _save(sys.argv[1], Path(sys.argv[2]))
