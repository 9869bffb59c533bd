"""Find, download, load and call Keras models.

A model URI is a local path or `az://<container>/<path>` on the configured storage account.
Formats: `.keras` (Keras 3), `.h5` (legacy HDF5) and TensorFlow SavedModel directories. Blob
models are downloaded once per node into the model cache (`WORKPOOL_MODEL_CACHE`, default
`<home>/models`), keyed by URI, so the worker processes of one node share one copy; a changed
model needs a new URI (version it in the name). Loaded models are kept per process, keyed by
URI, so a consumer serving several runs loads each model once.

Keras safe mode stays on unless `allow_unsafe_models` is set: a `.keras` file with a `Lambda`
layer would otherwise run arbitrary Python from the file when loaded. A SavedModel folder is
refused outright without it (TensorFlow's own security notes: a graph can read and write files,
use the network and start processes), before it is downloaded; its download keeps every blob
inside the staging folder (`staged_path`). A model over `max_model_bytes`, or a local path that is
not a regular file or a folder, is refused with a `MessageError` (no retry changes it).

Tasks score through `LoadedModel.score(pixels, mode)`: uint8 pixels go to the device as they are
(a quarter of float32's bytes) and the family's preprocessing (`consumer.preprocessing.on_device`)
runs there, compiled into the same call as the model. `warm(batch_size, mode)` traces and runs
that call once at the batch shape it will score, before the first batch. Where every new batch
shape is compiled again (XLA, JAX), a short batch is padded to the warmed shape and the padding's
outputs dropped; the plain TensorFlow graph is traced once for any batch size instead, so there a
short batch costs only its own images.

TensorFlow and Keras are imported here lazily, so tasks that need no model (the examples) start
without paying for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from consumer.preprocessing import Mode, on_device
from workpool.errors import MessageError, NotFoundError, WorkpoolError
from workpool.settings import Settings
from workpool.storage import ObjectStore, open_location, parse_location
from workpool.storage.base import ObjectTooLargeError
from workpool.storage.local import ensure_home

log = logging.getLogger(__name__)

Outputs = npt.NDArray[Any] | list[npt.NDArray[Any]] | dict[str, npt.NDArray[Any]]


class ModelLoadError(WorkpoolError):
    """The model exists but cannot be loaded (wrong format, broken): retried, then poisoned."""


class UnsafeModelError(MessageError):
    """The model runs Python code when loaded and this consumer does not allow that.

    No retry can change the answer, so the batch goes to poison at once, with this reason; the
    user opts in (if they trust the file) and runs `producer requeue --failed`.
    """


# Builds the on-device call for one preprocessing mode: uint8 (N, H, W, 3) in, outputs out.
ScorerFactory = Callable[[Mode], Callable[[npt.NDArray[Any]], Outputs]]


@dataclass
class LoadedModel:
    """A model ready to score: numpy in, numpy out, whichever Keras backend runs it.

    `model(batch)` calls it on an already preprocessed float batch; `score(pixels, mode)` on
    uint8 pixels, preprocessing on the device (the scoring path).
    """

    uri: str
    name: str
    input_size: tuple[int, int] | None  # (height, width) when the model fixes it
    output_names: list[str]
    call: Callable[[npt.NDArray[np.float32]], Outputs]
    scorer: ScorerFactory | None = None
    #: True where each new batch shape is compiled again (XLA, JAX): short batches are padded.
    compiles_per_shape: bool = False
    #: The batch size warmed (or the largest scored); shorter batches are padded to it when
    #: `compiles_per_shape`.
    batch_size: int = 0
    _scorers: dict[str, Callable[[npt.NDArray[Any]], Outputs]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, batch: npt.NDArray[np.float32]) -> Outputs:
        return self.call(batch)

    def score(self, pixels: npt.NDArray[Any], mode: Mode) -> Outputs:
        """Outputs for a batch of RGB pixels (uint8, N×H×W×3), preprocessed on the device."""
        count = len(pixels)
        if self.compiles_per_shape and 0 < count < self.batch_size:
            padding = np.zeros((self.batch_size - count, *pixels.shape[1:]), dtype=pixels.dtype)
            return _first_rows(self._scorer(mode)(np.concatenate([pixels, padding])), count)
        if count > self.batch_size:
            if self.compiles_per_shape and self.batch_size:
                log.info("model %s: batch of %d is larger than the warmed %d: compiling again", self.name, count,
                         self.batch_size)  # fmt: skip
            self.batch_size = count
        return self._scorer(mode)(pixels)

    def warm(self, batch_size: int, mode: Mode, size: tuple[int, int] | None = None) -> float:
        """Trace, compile and run the scoring call once at (batch_size, H, W, 3); seconds taken."""
        height, width = size or self.input_size or (0, 0)
        if not (height and width):
            raise ModelLoadError(f"model {self.uri}: no input size to warm up with")
        started = time.perf_counter()
        self.batch_size = max(self.batch_size, batch_size)
        self.score(np.zeros((batch_size, height, width, 3), dtype=np.uint8), mode)
        return time.perf_counter() - started

    def _scorer(self, mode: Mode) -> Callable[[npt.NDArray[Any]], Outputs]:
        with self._lock:
            if mode not in self._scorers:
                if self.scorer is not None:
                    self._scorers[mode] = self.scorer(mode)
                else:  # no on-device path: preprocess on the host (numpy), then call
                    from consumer.preprocessing import preprocess

                    self._scorers[mode] = lambda pixels: self.call(preprocess(pixels, mode))
            return self._scorers[mode]


def _first_rows(outputs: Outputs, count: int) -> Outputs:
    if isinstance(outputs, dict):
        return {k: v[:count] for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [v[:count] for v in outputs]
    return outputs[:count]


class ModelCache:
    """Per-process cache of loaded models; blob models are downloaded to a per-node folder."""

    def __init__(self, settings: Settings, max_models: int = 4) -> None:
        self.settings = settings
        self.max_models = max_models
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, uri: str) -> LoadedModel:
        """The loaded model; the least recently used are dropped beyond `max_models`."""
        with self._lock:
            if uri not in self._models:
                self._models[uri] = load_model(self.local_path(uri), uri, self.settings)
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            self._models.move_to_end(uri)
            return self._models[uri]

    def local_path(self, uri: str) -> Path:
        """A local file or directory holding the model named by `uri` (downloading blobs once).

        Only a regular file under `max_model_bytes`, or a folder (a SavedModel, which only
        `allow_unsafe_models` lets through, before anything is downloaded), is ever returned.
        """
        location = parse_location(uri)
        if not location.is_blob:
            return self._local_model(Path(location.path), uri)
        if self.settings.model_cache is None:
            ensure_home(self.settings.home)
        target = self.settings.model_cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:16] / _leaf(location.path)
        if target.exists():
            return target
        store, prefix = open_location(self.settings, uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Download into a temporary sibling, then rename: a crash or a second worker process
        # downloading at the same time never leaves a half-written model in the cache.
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
        try:
            if store.exists(prefix):
                (staging / "model").write_bytes(self._read_capped(store, prefix, uri))
            else:
                self._download_folder(store, prefix, uri, staging / "model")
            try:
                os.rename(staging / "model", target)
            except OSError:
                if not target.exists():  # lost a race with another process: theirs is as good
                    raise
            log.info("downloaded model %s to %s", uri, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _local_model(self, path: Path, uri: str) -> Path:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFoundError(f"model {uri} not found") from None
        if stat.S_ISDIR(st.st_mode):
            _refuse_saved_model_unless_allowed(uri, self.settings)
            return path
        if not stat.S_ISREG(st.st_mode):
            raise MessageError(f"model {uri} is not a regular file (a device, FIFO or socket is never read)")
        if st.st_size > self.settings.max_model_bytes:
            raise MessageError(
                f"model {uri} is {st.st_size} bytes, over the limit of {self.settings.max_model_bytes} "
                f"(WORKPOOL_MAX_MODEL_BYTES)"
            )
        return path

    def _read_capped(self, store: ObjectStore, name: str, uri: str) -> bytes:
        try:
            return store.read_capped(name, self.settings.max_model_bytes)
        except ObjectTooLargeError as exc:
            raise MessageError(f"model {uri}: {exc} (WORKPOOL_MAX_MODEL_BYTES)") from None

    def _download_folder(self, store: ObjectStore, prefix: str, uri: str, dest: Path) -> None:
        """A SavedModel: every blob under `<prefix>/`, each kept inside `dest` (see `staged_path`)."""
        base = prefix.rstrip("/") + "/"
        names = list(store.list(base))
        if not names:
            raise NotFoundError(f"model {uri} not found")
        _refuse_saved_model_unless_allowed(uri, self.settings)
        dest.mkdir()
        total = 0
        for name in names:
            path = staged_path(dest, name[len(base) :], uri)
            data = self._read_capped(store, name, uri)
            total += len(data)
            if total > self.settings.max_model_bytes:
                raise MessageError(
                    f"model {uri}: its files are over {self.settings.max_model_bytes} bytes together "
                    "(WORKPOOL_MAX_MODEL_BYTES)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "xb") as f:  # never through a link or over a file already written
                f.write(data)


def staged_path(dest: Path, relative: str, uri: str) -> Path:
    """Where the blob `relative` (to a SavedModel's prefix) goes inside `dest`; refused when it would
    leave it. Blob names are free text: `pfx//home/u/.bashrc` is `/home/u/.bashrc` relative to
    `pfx/`, which `dest / relative` would write outside the staging folder."""
    segments = relative.split("/")
    bad = next((s for s in segments if s in ("", ".", "..") or "\\" in s or "\x00" in s), None)
    if bad is not None:
        raise MessageError(
            f"model {uri}: blob name {relative!r} has an unsafe path segment {bad!r} (empty, '.', '..', '\\' or "
            "NUL); a SavedModel's files must be plain relative names"
        )
    path = dest.joinpath(*segments)
    if not path.resolve().is_relative_to(dest.resolve()):
        raise MessageError(f"model {uri}: blob name {relative!r} resolves outside the download folder")
    return path


def _refuse_saved_model_unless_allowed(uri: str, settings: Settings) -> None:
    if not settings.allow_unsafe_models:
        raise UnsafeModelError(
            f"model {uri} is a TensorFlow SavedModel folder: its graph can read and write files, use the network "
            "and start processes when it runs; set WORKPOOL_ALLOW_UNSAFE_MODELS=true (--allow-unsafe-models) "
            "only if you trust it, or give the model as a .keras file"
        )


def _leaf(path: str) -> str:
    leaf = path.rstrip("/").rsplit("/", 1)[-1]
    return leaf or "model"


def load_model(path: Path, uri: str, settings: Settings) -> LoadedModel:
    import keras

    safe_mode = not settings.allow_unsafe_models
    try:
        if path.is_dir():
            if not (path / "saved_model.pb").exists():
                raise ModelLoadError(f"model {uri}: a folder must be a TensorFlow SavedModel (no saved_model.pb)")
            _refuse_saved_model_unless_allowed(uri, settings)
            return _saved_model(path, uri)
        kind = _sniff(path)
        if kind == "keras":
            model = keras.saving.load_model(
                path if path.suffix == ".keras" else _with_suffix(path, ".keras"), safe_mode=safe_mode
            )
        elif kind == "h5":
            model = keras.saving.load_model(
                path if path.suffix == ".h5" else _with_suffix(path, ".h5"), safe_mode=safe_mode
            )
        else:
            raise ModelLoadError(f"model {uri}: expected a .keras or .h5 file or a SavedModel folder")
    except WorkpoolError:
        raise
    except ValueError as exc:
        text = str(exc)
        if "safe_mode" in text or "Lambda" in text:
            raise UnsafeModelError(
                f"model {uri} runs Python code when loaded (e.g. a Lambda layer); "
                "set WORKPOOL_ALLOW_UNSAFE_MODELS=true (--allow-unsafe-models) only if you trust it"
            ) from None
        raise ModelLoadError(f"model {uri} cannot be loaded: {text[:300]}") from None
    except (OSError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"model {uri} cannot be loaded: {type(exc).__name__}: {str(exc)[:300]}") from None
    if settings.precision == "mixed":
        model = with_mixed_precision(model)
    return wrap_keras_model(model, uri, settings)


def with_mixed_precision(model: Any) -> Any:
    """A copy of `model` computing in float16 with float32 variables (GPUs with tensor cores).

    A saved model pins every layer's dtype policy (float32 when it was trained that way), so a
    global policy set before loading changes nothing: the layers are rebuilt with the
    `mixed_float16` policy and given the same weights. The layers producing the model's outputs
    stay float32, so softmax scores keep full precision (Keras' own advice). Models that are not
    functional or sequential (subclassed) are returned as they are, with a warning.
    """
    import keras

    outputs = {id(t._keras_history[0]) for t in keras.tree.flatten(getattr(model, "outputs", None) or [])}

    def rebuild(layer: Any) -> Any:
        config = layer.get_config()
        if id(layer) not in outputs and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = "mixed_float16"
        return layer.__class__.from_config(config)

    try:
        clone = keras.models.clone_model(model, clone_function=rebuild)
    except (ValueError, TypeError, NotImplementedError) as exc:
        log.warning("--precision mixed: model %s cannot be rebuilt (%s); it runs in float32", model.name, exc)
        return model
    clone.set_weights(model.get_weights())
    return clone


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return "keras"  # a zip archive
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "h5"
    return "unknown"


def _with_suffix(path: Path, suffix: str) -> Path:
    """Keras picks the loader by file name; a cached blob may have none, so link one in."""
    alias = path.with_name(path.name + suffix)
    if not alias.exists():
        with contextlib.suppress(FileExistsError):
            os.symlink(path.name, alias)
    return alias


def wrap_keras_model(model: Any, uri: str, settings: Settings) -> LoadedModel:
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    size = (int(shape[1]), int(shape[2])) if len(shape) == 4 and shape[1] and shape[2] else None
    output_names = [str(n) for n in getattr(model, "output_names", None) or []]

    def direct(batch: Any) -> Any:
        return model(batch, training=False)

    def scorer(mode: Mode) -> Callable[[npt.NDArray[Any]], Outputs]:
        return _compiled(lambda pixels: model(on_device(pixels, mode), training=False), settings.xla, model)

    return LoadedModel(
        uri=uri,
        name=str(model.name),
        input_size=size,
        output_names=output_names,
        call=_compiled(direct, settings.xla, model),
        scorer=scorer,
        compiles_per_shape=_compiles_per_shape(settings),
    )


def _compiles_per_shape(settings: Settings) -> bool:
    import keras

    return keras.backend.backend() != "tensorflow" or settings.xla


def _compiled(fn: Callable[[Any], Any], xla: bool, model: Any | None = None) -> Callable[[Any], Outputs]:
    """`fn` as one compiled call on the backend, numpy in and out.

    TensorFlow: one traced graph instead of eager layer-by-layer dispatch, with relaxed shapes so
    a new batch size does not retrace (XLA only when asked: it compiles each shape). JAX: the
    model's stateless call under `jax.jit`. Other backends: called as it is.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        traced = tf.function(fn, jit_compile=xla, reduce_retracing=True)
        relaxed: set[tuple[Any, ...]] = set()

        def call(batch: Any) -> Outputs:
            if not xla:
                # Trace once for any batch size (the first call would trace its exact shape and a
                # short last batch would trace again); later calls of any size dispatch to it.
                key = (*batch.shape[1:], batch.dtype.str)
                if key not in relaxed:
                    traced.get_concrete_function(tf.TensorSpec([None, *batch.shape[1:]], batch.dtype))
                    relaxed.add(key)
            return _to_numpy(traced(batch))

        return call
    if xla:
        log.warning("--xla applies to the TensorFlow backend only; the %s backend compiles on its own", backend)
    if backend == "jax" and model is not None:
        return _jax_jitted(fn, model)
    return lambda batch: _to_numpy(fn(batch))


def _jax_jitted(fn: Callable[[Any], Any], model: Any) -> Callable[[Any], Outputs]:
    """`fn` (which calls `model`) compiled with `jax.jit`, the model's variables passed as arguments."""
    import jax  # type: ignore[import-not-found,unused-ignore]
    from keras import StatelessScope

    variables = [*model.trainable_variables, *model.non_trainable_variables]

    def pure(values: list[Any], batch: Any) -> Any:
        with StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            return fn(batch)

    jitted = jax.jit(pure)
    values = [v.value for v in variables]
    return lambda batch: _to_numpy(jitted(values, batch))


def _saved_model(path: Path, uri: str) -> LoadedModel:
    import keras

    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")

    def scorer(mode: Mode) -> Callable[[npt.NDArray[Any]], Outputs]:
        # A traced graph around the exported one (already a graph: XLA is not applied to it).
        return _compiled(lambda pixels: layer(on_device(pixels, mode)), xla=False)

    return LoadedModel(
        uri=uri,
        name=path.name,
        input_size=None,
        output_names=[],
        call=lambda batch: _to_numpy(layer(batch)),
        scorer=scorer,
    )


def _to_numpy(outputs: Any) -> Outputs:
    import keras

    if isinstance(outputs, dict):
        return {str(k): np.asarray(keras.ops.convert_to_numpy(v)) for k, v in outputs.items()}
    if isinstance(outputs, list | tuple):
        return [np.asarray(keras.ops.convert_to_numpy(v)) for v in outputs]
    return np.asarray(keras.ops.convert_to_numpy(outputs))
