"""`classification`: one softmax output, top-k classes per image.

Class names come from the message's `labels` URI (see `consumer.labels`), else, for a model with
1000 outputs, the ImageNet names shipped with the package, else the class index as text.
A JSON labels file may also set task options:

    {"labels": [...], "top_k": 5, "preprocess": "tf", "input_size": [299, 299]}

`preprocess` defaults to the model family's convention (`consumer.preprocessing`) and
`input_size` to the model's own input shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from consumer.labels import IMAGENET_CLASSES, imagenet_names, parse_labels_file
from consumer.models import LoadedModel
from consumer.preprocessing import Mode, mode_for_model_name
from consumer.tasks.base import Input, Pixels, ScoringTask, TaskContext
from workpool.errors import MessageError, UsageError

DEFAULT_TOP_K = 5


class ClassificationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(DEFAULT_TOP_K, ge=1)
    preprocess: Mode | None = None
    input_size: tuple[int, int] | None = None


class Classification(ScoringTask):
    def __init__(self, model: LoadedModel, labels: list[str] | None, options: ClassificationOptions) -> None:
        self.model = model
        self.labels = labels
        self.top_k = options.top_k
        self.mode: Mode = options.preprocess or mode_for_model_name(model.name)
        self.input_size = options.input_size or model.input_size
        if self.input_size is None:
            raise UsageError(f"model {model.uri} does not fix its input size; give input_size in the labels JSON")

    @classmethod
    def load(cls, context: TaskContext, model: str | None, labels: str | None) -> Classification:
        if not model:
            raise MessageError("task classification needs a model URI in the message")
        names: list[str] | None = None
        raw_options: dict[str, Any] = {}
        if labels:
            names, raw_options = parse_labels_file(labels, context.read(labels))
        try:
            options = ClassificationOptions.model_validate(raw_options)
        except ValidationError as exc:
            raise UsageError(f"labels {labels}: bad task options: {exc.errors()[0]['msg']}") from None
        return cls(context.models.get(model), names, options)

    def preprocess(self, pixels: Pixels) -> Input:
        return pixels  # scaled on the device, in the model call (`predict`)

    def warm(self, batch_size: int) -> None:
        self.model.warm(batch_size, self.mode, self.input_size)

    def predict(self, batch: Input) -> npt.NDArray[Any]:
        outputs = self.model.score(batch, self.mode)
        if isinstance(outputs, dict):
            outputs = next(iter(outputs.values()))
        if isinstance(outputs, list):
            outputs = outputs[0]
        return np.asarray(outputs, dtype=np.float32).reshape(len(batch), -1)

    def postprocess(self, outputs: npt.NDArray[Any], count: int) -> list[Any]:
        scores = as_probabilities(outputs)
        classes = scores.shape[1]
        names = self._names(classes)
        k = min(self.top_k, classes)
        # The whole batch at once: argpartition finds each row's k best in O(classes), then only
        # those k are sorted; Python touches k values per image, never the class axis.
        best = np.argpartition(-scores[:count], k - 1, axis=1)[:, :k]
        top = np.take_along_axis(scores[:count], best, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        indexes = np.take_along_axis(best, order, axis=1).tolist()
        values = np.take_along_axis(top, order, axis=1).tolist()
        return [
            [{"label": names[j], "index": j, "score": v} for j, v in zip(row_indexes, row_values, strict=True)]
            for row_indexes, row_values in zip(indexes, values, strict=True)
        ]

    def _names(self, classes: int) -> Sequence[str]:
        if self.labels is not None:
            if len(self.labels) != classes:
                raise UsageError(
                    f"labels list {len(self.labels)} names but model {self.model.uri} has {classes} outputs"
                )
            return self.labels
        if classes == IMAGENET_CLASSES:
            return imagenet_names()
        return [str(i) for i in range(classes)]


def as_probabilities(outputs: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """The model's softmax output as is; logits (negative, or rows not summing to 1) get a softmax."""
    x = np.asarray(outputs, dtype=np.float32)
    sums = x.sum(axis=1)
    if x.size and (x.min() >= 0) and np.allclose(sums, 1.0, atol=1e-3):
        return x
    shifted = x - x.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    probabilities: npt.NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities
