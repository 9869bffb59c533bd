"""The model of a run, checked at enqueue: a task that needs one gets one, and it can be opened.

Caught here, a missing or unusable model costs one clear line and exit code 2; caught by the
consumers, it costs every batch of the run, each after `--max-attempts` deliveries.

A local model is opened the way a consumer opens it, in Keras safe mode, reading only its
header, which is cheap: the architecture (`config.json` in a `.keras` archive, the
`model_config` attribute of an `.h5` file), never the weights. So a file that is no model, a
damaged archive, or a model that would run Python code when loaded (a `Lambda` layer, which safe
mode refuses) is refused now. The producer never runs a model's code, whatever the settings:
with `allow_unsafe_models` such a model is let through with a warning naming what the pool needs.
A blob model (az://) is checked for existence only (its header would cost a download).
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any

from consumer.models import _sniff as sniff_format
from workpool.errors import UsageError
from workpool.settings import Settings, env_name
from workpool.storage import parse_location

log = logging.getLogger(__name__)

# Built-in tasks that score with a model (custom tasks may or may not: they are not imported here).
TASKS_NEEDING_A_MODEL = ("classification", "cloth_recognition")
# Layer classes whose configuration carries Python code; Keras safe mode refuses to load them.
CODE_LAYERS = frozenset({"Lambda", "__lambda__"})


def check_model_needed(task: str, model: str | None) -> None:
    if model is None and task in TASKS_NEEDING_A_MODEL:
        raise UsageError(
            f"task {task} needs a model: give --model PATH or --model az://<container>/<path> "
            "(a .keras, .h5 or SavedModel); a task that needs none is a custom one (--task pkg.module:Class)"
        )


def check_model_opens(settings: Settings, uri: str) -> None:
    """Refuse (UsageError) a local model whose header a consumer could not load in safe mode."""
    location = parse_location(uri)
    if location.is_blob:
        return
    path = Path(location.path)
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise UsageError(f"--model {uri}: a folder must be a TensorFlow SavedModel (no saved_model.pb in it)")
        return
    kind = sniff_format(path)
    if kind == "keras":
        config = _keras_config(path, uri)
    elif kind == "h5":
        config = _h5_config(path, uri)
    else:
        raise UsageError(f"--model {uri}: not a model (expected a .keras or .h5 file, or a SavedModel folder)")
    layers = sorted(_code_layers(config))
    if not layers:
        return
    what = f"--model {uri} runs Python code when loaded ({', '.join(layers)} layer)"
    setting = env_name("allow_unsafe_models")
    if not settings.allow_unsafe_models:
        raise UsageError(
            f"{what}; consumers refuse it in safe mode. Only if you trust the file: set {setting}=true here and "
            "for the pool (settings reach nodes at launch: `orchestration teardown`, then `orchestration launch`)"
        )
    log.warning("%s; consumers score it only if the pool was launched with %s=true", what, setting)


def _keras_config(path: Path, uri: str) -> Any:
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except KeyError:
        raise UsageError(f"--model {uri}: a .keras archive without config.json; not a Keras model") from None
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UsageError(f"--model {uri}: the .keras archive cannot be read ({exc})") from None


def _h5_config(path: Path, uri: str) -> Any:
    import h5py  # type: ignore[import-untyped]

    try:
        with h5py.File(path, "r") as f:
            text = f.attrs.get("model_config")
    except OSError as exc:
        raise UsageError(f"--model {uri}: the .h5 file cannot be read ({exc})") from None
    if text is None:
        raise UsageError(f"--model {uri}: an .h5 file without a model architecture (weights only?)")
    try:
        return json.loads(text.decode() if isinstance(text, bytes) else str(text))
    except ValueError as exc:
        raise UsageError(f"--model {uri}: the .h5 model architecture is damaged ({exc})") from None


def _code_layers(config: Any) -> set[str]:
    """Class names of the code-carrying layers anywhere in a Keras model configuration."""
    found: set[str] = set()
    if isinstance(config, dict):
        if config.get("class_name") in CODE_LAYERS:
            found.add("Lambda")  # the layer, or the serialized function inside one
        for value in config.values():
            found |= _code_layers(value)
    elif isinstance(config, list):
        for value in config:
            found |= _code_layers(value)
    return found
