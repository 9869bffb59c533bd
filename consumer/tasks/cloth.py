"""`cloth_recognition`: a multi-head attribute model, one entry per head in each row.

The head spec is a small JSON file: the message's `labels` URI when given, else beside the model
as `<model>.heads.json` (e.g. `cloth.keras.heads.json`) or with the model's suffix replaced
(`cloth.heads.json`):

    {
      "preprocess": "tf",                  optional; default: the model family's convention
      "input_size": [224, 224],            optional; default: the model's input shape
      "heads": [
        {"name": "category", "activation": "softmax", "labels": ["dress", "shirt", "coat"], "top_k": 1},
        {"name": "attributes", "activation": "sigmoid", "labels": ["striped", "floral"], "threshold": 0.5}
      ]
    }

Heads are matched to the model's outputs by `output` (an output name) when given, else by
`name` when the model has an output of that name, else by position. A softmax head reports its
`top_k` (default 1) labels with scores; a sigmoid head reports every label scoring at least
`threshold` (default 0.5), best first. Scores are the model's outputs as they are.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from consumer.models import LoadedModel, Outputs
from consumer.preprocessing import Mode, mode_for_model_name
from consumer.tasks.base import Input, Pixels, ScoringTask, TaskContext
from workpool.errors import MessageError, UsageError

HEADS_SUFFIX = ".heads.json"


class Head(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    activation: Literal["softmax", "sigmoid"]
    labels: list[str] = Field(min_length=1)
    output: str | None = None
    top_k: int = Field(1, ge=1)
    threshold: float = Field(0.5, ge=0.0, le=1.0)


class HeadSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    heads: list[Head] = Field(min_length=1)
    preprocess: Mode | None = None
    input_size: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> HeadSpec:
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError("head names must be unique")
        return self


def spec_candidates(model: str) -> list[str]:
    """Where a head spec beside `model` may be: `<model>.heads.json`, then `<stem>.heads.json`."""
    candidates = [model.rstrip("/") + HEADS_SUFFIX]
    leaf = model.rstrip("/").rsplit("/", 1)[-1]
    if "." in leaf:
        candidates.append(model.rstrip("/")[: -len(leaf)] + leaf.rsplit(".", 1)[0] + HEADS_SUFFIX)
    return candidates


def parse_spec(uri: str, data: bytes) -> HeadSpec:
    try:
        return HeadSpec.model_validate(json.loads(data))
    except ValueError as exc:
        detail = exc.errors()[0] if isinstance(exc, ValidationError) else None
        where = ".".join(str(p) for p in detail["loc"]) + ": " if detail and detail["loc"] else ""
        reason = detail["msg"] if detail else str(exc)
        raise UsageError(f"head spec {uri}: {where}{reason}") from None


class ClothRecognition(ScoringTask):
    def __init__(self, model: LoadedModel, spec: HeadSpec) -> None:
        self.model = model
        self.spec = spec
        self.mode: Mode = spec.preprocess or mode_for_model_name(model.name)
        self.input_size = spec.input_size or model.input_size
        if self.input_size is None:
            raise UsageError(f"model {model.uri} does not fix its input size; give input_size in the head spec")

    @classmethod
    def load(cls, context: TaskContext, model: str | None, labels: str | None) -> ClothRecognition:
        if not model:
            raise MessageError("task cloth_recognition needs a model URI in the message")
        if labels:
            spec_uri = labels
        else:
            found = [c for c in spec_candidates(model) if context.exists(c)]
            if not found:
                raise UsageError(f"no head spec for {model}: expected {' or '.join(spec_candidates(model))}")
            spec_uri = found[0]
        return cls(context.models.get(model), parse_spec(spec_uri, context.read(spec_uri)))

    def preprocess(self, pixels: Pixels) -> Input:
        return pixels  # scaled on the device, in the model call (`predict`)

    def warm(self, batch_size: int) -> None:
        self.model.warm(batch_size, self.mode, self.input_size)

    def predict(self, batch: Input) -> Outputs:
        return self.model.score(batch, self.mode)

    def postprocess(self, outputs: Outputs, count: int) -> list[Any]:
        per_head = [
            _head_predictions(head, self._head_output(outputs, i, head)[:count])
            for i, head in enumerate(self.spec.heads)
        ]
        names = [head.name for head in self.spec.heads]
        return [dict(zip(names, entries, strict=True)) for entries in zip(*per_head, strict=True)]

    def _head_output(self, outputs: Outputs, position: int, head: Head) -> npt.NDArray[np.float32]:
        key = head.output or head.name
        if isinstance(outputs, dict):
            value = outputs[key] if key in outputs else list(outputs.values())[position]
        elif isinstance(outputs, list):
            if len(outputs) != len(self.spec.heads):
                raise UsageError(
                    f"head spec names {len(self.spec.heads)} heads, model {self.model.uri} has {len(outputs)} outputs"
                )
            index = self.model.output_names.index(key) if key in self.model.output_names else position
            value = outputs[index]
        else:
            if len(self.spec.heads) != 1:
                raise UsageError(
                    f"head spec names {len(self.spec.heads)} heads but model {self.model.uri} has one output"
                )
            value = outputs
        scores = np.asarray(value, dtype=np.float32).reshape(len(value), -1)
        if scores.shape[1] != len(head.labels):
            raise UsageError(
                f"head {head.name!r} lists {len(head.labels)} labels but its output has {scores.shape[1]} values"
            )
        return scores


def _head_predictions(head: Head, scores: npt.NDArray[np.float32]) -> list[list[dict[str, Any]]]:
    """One head's entries for every image of the batch: a few array operations, not a loop per image."""
    order = np.argsort(-scores, axis=1, kind="stable")
    if head.activation == "softmax":
        order = order[:, : head.top_k]
    ranked = np.take_along_axis(scores, order, axis=1)
    labels = head.labels
    if head.activation == "softmax":
        return [
            [{"label": labels[j], "score": v} for j, v in zip(row_order, row_scores, strict=True)]
            for row_order, row_scores in zip(order.tolist(), ranked.tolist(), strict=True)
        ]
    keep = (ranked >= head.threshold).tolist()  # compared in float32, as the scores are
    return [
        [{"label": labels[j], "score": v} for j, v, k in zip(row_order, row_scores, row_keep, strict=True) if k]
        for row_order, row_scores, row_keep in zip(order.tolist(), ranked.tolist(), keep, strict=True)
    ]
