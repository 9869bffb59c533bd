"""The image-batch message: what travels on the queue, validated by pydantic on both ends.

A message names images, never carries pixels. On the wire it is compact JSON text, readable by
any Azure Storage Queue client. Azure accepts at most 64 KiB per message, measured on the
XML-escaped request body, so sizes here are measured the same way; `pack_batches` cuts a list of
names into batches that always fit, however long or non-ASCII the names are.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Literal
from xml.sax.saxutils import escape

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from workpool.errors import MessageError, MessageTooLargeError

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Images per message. A consumer decodes a whole batch into memory at once (about 1 MB per image
# at InceptionV3's input size), so a forged message naming thousands of images must be refused,
# not allowed to exhaust a node's memory on every delivery.
MAX_BATCH_IMAGES = 1024


class BatchMessage(BaseModel):
    """One batch of images to score. `images` are names relative to `source`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    run_id: str = Field(pattern=ID_PATTERN)
    batch_id: str = Field(pattern=ID_PATTERN)
    task: str = Field(min_length=1, max_length=200)
    model: str | None = Field(None, description="Model URI: a local path or az://container/path.")
    labels: str | None = Field(None, description="Labels URI for the task, if any.")
    source: str = Field(min_length=1, description="A local directory or az://container/prefix.")
    images: list[str] = Field(min_length=1, max_length=MAX_BATCH_IMAGES)

    @field_validator("images")
    @classmethod
    def _safe_names(cls, images: list[str]) -> list[str]:
        for name in images:
            problem = unsafe_name_reason(name)
            if problem:
                raise ValueError(f"image name {name!r} {problem}")
        return images

    def encode(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> BatchMessage:
        """Parse and validate; any problem raises `MessageError` with a one-line reason."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MessageError(f"message is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MessageError(f"message is JSON {type(data).__name__}, expected an object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise MessageError(f"unsupported schema_version {version!r}, this consumer reads {SCHEMA_VERSION}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            reasons = [
                f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors(include_input=False, include_url=False)[:5]
            ]
            raise MessageError("invalid message: " + "; ".join(reasons)) from None


def unsafe_name_reason(name: str) -> str | None:
    """Why an image name could read outside its source, or None when it is a plain relative name."""
    if not name or not name.strip():
        return "is empty"
    if "\x00" in name:
        return "contains a NUL character"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is absolute; names must be relative to the run's source"
    if ".." in name.replace("\\", "/").split("/"):
        return "contains '..'; names must stay inside the run's source"
    if "://" in name:
        return "is a URL; names must be relative to the run's source"
    return None


def encoded_size(text: str) -> int:
    """Bytes the message takes in Azure's XML request body (the quantity the 64 KiB limit is on)."""
    return len(escape(text).encode("utf-8"))


def check_size(text: str) -> str:
    size = encoded_size(text)
    if size > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(f"message is {size} bytes encoded; the queue accepts at most {MAX_MESSAGE_BYTES}")
    return text


def pack_batches(names: Iterable[str], batch_size: int, overhead_bytes: int) -> Iterator[list[str]]:
    """Cut names into batches of at most `batch_size` whose message stays within 64 KiB.

    `overhead_bytes` is the encoded size of the message with an empty image list. Each name
    costs its JSON-and-XML-escaped length plus a comma. A batch is closed early when the next
    name would not fit, so long or non-ASCII names give more, smaller batches instead of an
    oversized message.
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    budget = MAX_MESSAGE_BYTES - overhead_bytes
    batch: list[str] = []
    used = 0
    for name in names:
        cost = encoded_size(json.dumps(name, ensure_ascii=False)) + 1
        if cost > budget:
            raise MessageTooLargeError(
                f"image name of {cost} encoded bytes cannot fit in any message: {name[:80]!r}..."
            )
        if batch and (len(batch) >= batch_size or used + cost > budget):
            yield batch
            batch, used = [], 0
        batch.append(name)
        used += cost
    if batch:
        yield batch
