"""Planning a run: the listing cut into batches, the manifest, and one message body per batch.

Everything is built and checked in memory before anything is written, so bad input (a name that
cannot fit in any message, a name that escapes the source) stops the run with nothing left
behind. Batch ids are `b000000`, `b000001`, … in listing order (wider past a million batches, so
they keep sorting in order).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from pydantic import ValidationError

from workpool.errors import MessageTooLargeError, UsageError
from workpool.messages import BatchMessage, check_size, encoded_size, pack_batches
from workpool.runs import Manifest

# Room for the longest batch id we could give, so the size budget holds for every batch.
_LONGEST_BATCH_ID = "b" + "9" * 12


@dataclass(frozen=True)
class RunSpec:
    """What a run scores and where its messages go: the fields every message shares."""

    run_id: str
    source: str
    task: str
    model: str | None
    labels: str | None
    batch_size: int
    queue: str

    def _message_fields(self) -> dict[str, Any]:
        """The fields every message of the run carries (batch size and queue stay in the manifest)."""
        return {k: v for k, v in asdict(self).items() if k not in ("batch_size", "queue")}

    def message(self, batch_id: str, images: list[str]) -> BatchMessage:
        return BatchMessage.model_validate({**self._message_fields(), "batch_id": batch_id, "images": images})

    def overhead_bytes(self) -> int:
        """Encoded size of this run's message with an empty image list (pack_batches' budget)."""
        # model_construct: an empty image list is what we measure, though no valid message has one.
        empty = BatchMessage.model_construct(**self._message_fields(), batch_id=_LONGEST_BATCH_ID, images=[])
        return encoded_size(empty.encode())


@dataclass(frozen=True)
class RunPlan:
    manifest: Manifest
    bodies: list[str]  # encoded messages, in batch order

    @property
    def batch_ids(self) -> list[str]:
        return list(self.manifest.batches)


def batch_ids(count: int) -> list[str]:
    width = max(6, len(str(count - 1)))
    return [f"b{i:0{width}d}" for i in range(count)]


def plan_run(spec: RunSpec, images: list[str], skipped: int = 0) -> RunPlan:
    """Cut `images` into ≤ batch_size, ≤ 64 KiB batches; build the manifest and the messages."""
    try:
        batches = list(pack_batches(images, spec.batch_size, spec.overhead_bytes()))
    except MessageTooLargeError as exc:
        raise UsageError(str(exc)) from None
    ids = batch_ids(len(batches))
    try:
        bodies = [
            check_size(spec.message(batch_id, batch).encode()) for batch_id, batch in zip(ids, batches, strict=True)
        ]
    except ValidationError as exc:
        # Names are checked when listed; this is the schema's last word (e.g. an unsafe name).
        first = exc.errors(include_input=False, include_url=False)[0]
        raise UsageError(f"cannot build a valid message: {first['msg'].removeprefix('Value error, ')}") from None
    except MessageTooLargeError as exc:
        raise UsageError(str(exc)) from None
    manifest = build_manifest(spec, dict(zip(ids, batches, strict=True)), images=len(images), skipped=skipped)
    return RunPlan(manifest=manifest, bodies=bodies)


def build_manifest(spec: RunSpec, batches: dict[str, list[str]], *, images: int, skipped: int) -> Manifest:
    return Manifest.model_validate({**asdict(spec), "images": images, "skipped": skipped, "batches": batches})


def spec_of(manifest: Manifest) -> RunSpec:
    """The message fields of a recorded run (for requeue): every RunSpec field is a manifest field."""
    return RunSpec(**{f.name: getattr(manifest, f.name) for f in fields(RunSpec)})
