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
from consumer.preprocessing import Mode, mode_for_model_name, preprocess
from consumer.tasks.base import Array, Pixels, ScoringTask, TaskContext
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

    def preprocess(self, pixels: Pixels) -> Array:
        return preprocess(pixels, self.mode)

    def predict(self, batch: Array) -> Outputs:
        return self.model(batch)

    def postprocess(self, outputs: Outputs, count: int) -> list[Any]:
        per_head = [self._head_output(outputs, i, head) for i, head in enumerate(self.spec.heads)]
        rows: list[dict[str, Any]] = []
        for row in range(count):
            entry: dict[str, Any] = {}
            for head, scores in zip(self.spec.heads, per_head, strict=True):
                entry[head.name] = _head_predictions(head, scores[row])
            rows.append(entry)
        return rows

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


def _head_predictions(head: Head, scores: npt.NDArray[np.float32]) -> list[dict[str, Any]]:
    order = np.argsort(-scores, kind="stable")
    chosen = order[: head.top_k] if head.activation == "softmax" else [i for i in order if scores[i] >= head.threshold]
    return [{"label": head.labels[i], "score": float(scores[i])} for i in chosen]
