"""Class names: from a labels file, or the ImageNet names shipped with the package.

A labels file is `.txt` (one name per line, in output order) or `.json`: a list of names, a list
of `[id, name]` pairs (Keras' `imagenet_class_index` style), or an object whose `labels` key
holds either, beside task options (see `consumer.tasks.classification`).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from workpool.errors import UsageError

IMAGENET_CLASSES = 1000


@cache
def imagenet_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in Keras' output order (WordNet ids, sorted)."""
    text = resources.files("consumer").joinpath("data/imagenet_classes.json").read_text(encoding="utf-8")
    pairs = json.loads(text)
    assert len(pairs) == IMAGENET_CLASSES
    return tuple(str(name) for _, name in pairs)


def parse_labels_file(uri: str, data: bytes) -> tuple[list[str] | None, dict[str, Any]]:
    """(names or None, options) from a labels file's bytes; `uri` is for messages only."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"labels {uri}: not UTF-8 text") from None
    if not uri.lower().endswith(".json"):
        return [line.strip() for line in text.splitlines() if line.strip()], {}
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"labels {uri}: not valid JSON: {exc}") from None
    options: dict[str, Any] = {}
    if isinstance(raw, dict):
        options = {k: v for k, v in raw.items() if k != "labels"}
        raw = raw.get("labels")
    if raw is None:
        return None, options
    if not isinstance(raw, list):
        raise UsageError(f"labels {uri}: 'labels' must be a list of names")
    return [_name(uri, item) for item in raw], options


def _name(uri: str, item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
        return str(item[1])
    raise UsageError(f"labels {uri}: expected names or [id, name] pairs, got {item!r:.60}")
