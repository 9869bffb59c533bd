"""The scoring-task interface: what turns decoded images into predictions for one kind of model.

A task is loaded once per `(task, model, labels)` a message names and reused for every batch
that names the same. Its three steps run in different places, which is why they are separate:

- `preprocess(pixels)` runs in the decode threads, one image at a time, while the previous batch
  is being scored. Pixels arrive as RGB uint8 arrays already resized to `input_size`. The
  built-in tasks return them as they are: their model call scales them on the device
  (`LoadedModel.score`), so the host sends uint8 and does no float arithmetic.
- `predict(batch)` runs on the scoring thread with the stacked, preprocessed images of the
  batch's readable images. Numpy in, numpy out: no framework types cross this line.
- `postprocess(outputs, count)` turns the model outputs into one JSON-able `predictions` value
  per image, in order.
- `warm(batch_size)` runs once after `load`, before the consumer takes its first batch
  (`consumer.warmup`): the built-in tasks trace and compile their model call at the batch shape
  they will score. The default does nothing (a custom task's `predict` may have side effects).

A custom task is any importable class implementing this interface, named in the message as
`package.module:ClassName` (see `consumer.tasks.examples` for one that needs no model).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from consumer.models import ModelCache
from workpool.errors import MessageError, NotFoundError
from workpool.settings import Settings
from workpool.storage import open_location, parse_location
from workpool.storage.base import ObjectTooLargeError
from workpool.storage.local import NotRegularFileError, read_regular_file

Pixels = npt.NDArray[np.uint8]
Array = npt.NDArray[np.float32]
# One image's (or a stacked batch's) model input: uint8 pixels, or float32 from a custom task.
Input = npt.NDArray[Any]


@dataclass(frozen=True)
class TaskContext:
    """What a task may use while loading: the settings, the model cache and a file reader."""

    settings: Settings
    models: ModelCache

    def read(self, uri: str) -> bytes:
        """The bytes of a small file (labels, head spec) named by a local path or az:// URI: a
        regular file of at most `max_labels_bytes` (else a `MessageError`: no retry changes it)."""
        location = parse_location(uri)
        limit = self.settings.max_labels_bytes
        try:
            if not location.is_blob:
                return read_regular_file(Path(location.path), limit, uri)
            store, name = open_location(self.settings, uri)
            return store.read_capped(name, limit)
        except (FileNotFoundError, IsADirectoryError):
            raise NotFoundError(f"{uri} not found") from None
        except ObjectTooLargeError as exc:
            raise MessageError(f"{exc} (WORKPOOL_MAX_LABELS_BYTES)") from None
        except NotRegularFileError as exc:
            raise MessageError(str(exc)) from None

    def exists(self, uri: str) -> bool:
        location = parse_location(uri)
        if not location.is_blob:
            return os.path.isfile(location.path)
        store, name = open_location(self.settings, uri)
        return store.exists(name)


class ScoringTask(ABC):
    """One kind of scoring. Subclasses set `input_size` while loading."""

    #: (height, width) every image is resized to before `preprocess`; None keeps the decoded size
    #: (then the task must cope with images of different sizes itself).
    input_size: tuple[int, int] | None = None

    @classmethod
    @abstractmethod
    def load(cls, context: TaskContext, model: str | None, labels: str | None) -> ScoringTask:
        """Build the task for a message's `model` and `labels` URIs (either may be None)."""

    @abstractmethod
    def preprocess(self, pixels: Pixels) -> Input:
        """One image's RGB uint8 pixels → the model's input for it (uint8 or float32)."""

    @abstractmethod
    def predict(self, batch: Input) -> Any:
        """Score a stacked batch (N, ...) → model outputs (numpy arrays)."""

    @abstractmethod
    def postprocess(self, outputs: Any, count: int) -> list[Any]:
        """Model outputs → `count` JSON-able predictions, one per image, in batch order."""

    def warm(self, batch_size: int) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Get ready to score batches of `batch_size` (before the first lease); default: nothing."""
