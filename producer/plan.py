"""Planning a run: the listing cut into batches, the manifest, and one message body per batch.

Everything is built and checked in memory before anything is written, so bad input (a name that
cannot fit in any message, a name that escapes the source) stops the run with nothing left
behind. Batch ids are `b000000`, `b000001`, … in listing order (wider past a million batches, so
they keep sorting in order).
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def message(self, batch_id: str, images: list[str]) -> BatchMessage:
        return BatchMessage(
            run_id=self.run_id,
            batch_id=batch_id,
            task=self.task,
            model=self.model,
            labels=self.labels,
            source=self.source,
            images=images,
        )

    def overhead_bytes(self) -> int:
        """Encoded size of this run's message with an empty image list (pack_batches' budget)."""
        empty = BatchMessage.model_construct(
            run_id=self.run_id,
            batch_id=_LONGEST_BATCH_ID,
            task=self.task,
            model=self.model,
            labels=self.labels,
            source=self.source,
            images=[],
        )
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
    return Manifest(
        run_id=spec.run_id,
        source=spec.source,
        task=spec.task,
        model=spec.model,
        labels=spec.labels,
        batch_size=spec.batch_size,
        queue=spec.queue,
        images=images,
        skipped=skipped,
        batches=batches,
    )


def spec_of(manifest: Manifest) -> RunSpec:
    """The message fields of a recorded run (for requeue)."""
    return RunSpec(
        run_id=manifest.run_id,
        source=manifest.source,
        task=manifest.task,
        model=manifest.model,
        labels=manifest.labels,
        batch_size=manifest.batch_size,
        queue=manifest.queue,
    )
