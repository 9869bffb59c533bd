"""`producer enqueue`: a source becomes a run: listing → plan → manifest → messages.

The order is the guarantee. Every check (run id, task, model (present when the task needs one,
and openable in safe mode: producer/model_check.py) and labels, the source, every name
and every message's size) happens before anything is written; the manifest is written before the
first message is sent, so every message on the queue belongs to a recorded run; if something
fails before sending starts, the manifest is removed again and nothing is left behind. The
manifest is created only if absent (in the store itself), so of two producers racing on one
`--run` exactly one enqueues it and the other stops with "already exists" (exit 2).

Other code (the benchmark, the demo) calls `enqueue(settings, EnqueueRequest(...))` directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from producer.model_check import TASKS_NEEDING_A_MODEL, check_model_needed, check_model_opens
from producer.plan import RunSpec, plan_run
from producer.progress import progress
from producer.sending import SendIncomplete, send_all
from producer.sources import IMAGE_EXTENSIONS, list_source
from producer.validate import check_run_id, check_task, check_uri, new_run_id
from workpool.errors import NotFoundError, TransientError, UsageError, WorkpoolError
from workpool.queue import open_queue
from workpool.retry import retry_transient
from workpool.runs import Manifest, RunExistsError, RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnqueueRequest:
    source: str
    run_id: str | None = None
    task: str = "classification"
    model: str | None = None
    labels: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class EnqueueSummary:
    run_id: str
    source: str
    queue: str
    task: str
    model: str | None
    labels: str | None
    batch_size: int
    images: int
    batches: int
    skipped: int
    duplicates: int
    seconds: float
    send_seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def enqueue(settings: Settings, request: EnqueueRequest, *, progress_bar: bool | None = None) -> EnqueueSummary:
    started = time.monotonic()
    run_id = check_run_id(request.run_id) if request.run_id is not None else new_run_id()
    task = check_task(request.task)
    if request.limit is not None and request.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {request.limit}")
    runs = RunStore(open_result_store(settings))
    refuse_existing_run(runs, run_id)
    model = check_uri(settings, request.model, "model")
    if model is not None and task in TASKS_NEEDING_A_MODEL:  # built-in tasks load it the consumers' way
        check_model_opens(settings, model)
    labels = check_uri(settings, request.labels, "labels")

    listing = list_source(settings, request.source)
    images = listing.images if request.limit is None else listing.images[: request.limit]
    if not images:
        raise UsageError(f"no images in {request.source}{_skipped_note(listing.skipped)}; nothing enqueued")
    check_model_needed(task, model)  # after the source, whose mistakes are named first
    spec = RunSpec(
        run_id=run_id,
        source=listing.source,
        task=task,
        model=model,
        labels=labels,
        batch_size=settings.batch_size,
        queue=settings.queue,
    )
    plan = plan_run(spec, images, skipped=listing.skipped)
    log.debug("run %s: %d images in %d batches from %s", run_id, len(images), len(plan.bodies), listing.source)

    with open_queue(settings) as queue:
        retry_transient(queue.create, f"create queue {queue.name}")
        retry_transient(runs.store.ensure, f"create result store {runs.store.location}")
        refuse_existing_run(runs, run_id)  # again, now that the listing may have taken a while
        sent, sending = 0, False
        try:
            try:
                # Created only if absent: of two producers racing on one run id, one gets it.
                retry_transient(lambda: runs.create_manifest(plan.manifest), f"write manifest of run {run_id}")
            except RunExistsError:
                raise run_exists(runs, run_id) from None
            sending = True
            send_started = time.monotonic()
            with progress(len(plan.bodies), f"enqueue {run_id}", bar=progress_bar) as advance:

                def on_sent(n: int) -> None:
                    nonlocal sent
                    sent += n
                    advance(n)

                send_all(queue, plan.bodies, ttl_s=settings.message_ttl_s, on_sent=on_sent)
        except SendIncomplete as exc:
            raise WorkpoolError(f"run {run_id}: {exc}. {_hint(run_id)}") from None
        except BaseException as exc:
            # Nothing can be on the queue before sending starts, nor when the first chunk was refused
            # (unlike a timeout, after which a message may have arrived): then leave no trace.
            if isinstance(exc, RunExistsError):
                pass  # the manifest there is another producer's
            elif not sending or (sent == 0 and not isinstance(exc, TransientError | KeyboardInterrupt)):
                _forget(runs, plan.manifest)
            else:
                log.error("run %s stopped after %d of %d messages. %s", run_id, sent, len(plan.bodies), _hint(run_id))
            raise
        finished = time.monotonic()

    return EnqueueSummary(
        run_id=run_id,
        source=listing.source,
        queue=settings.queue,
        task=task,
        model=model,
        labels=labels,
        batch_size=settings.batch_size,
        images=len(images),
        batches=len(plan.bodies),
        skipped=listing.skipped,
        duplicates=listing.duplicates,
        seconds=round(finished - started, 3),
        send_seconds=round(finished - send_started, 3),
    )


def refuse_existing_run(runs: RunStore, run_id: str) -> None:
    if runs.has_manifest(run_id):
        raise run_exists(runs, run_id)


def run_exists(runs: RunStore, run_id: str) -> RunExistsError:
    return RunExistsError(
        f"run {run_id} already exists in {runs.store.location}; a run is enqueued once. "
        f"To re-send its work use `producer requeue --run {run_id} --failed` (poisoned batches) "
        f"or `--missing` (batches without results), or pick a new --run"
    )


def _forget(runs: RunStore, manifest: Manifest) -> None:
    """Remove the manifest this producer wrote (only if it is still ours)."""
    run_id = manifest.run_id
    try:
        if runs.read_manifest(run_id) == manifest:
            runs.delete_manifest(run_id)
    except NotFoundError:
        pass  # never written
    except (WorkpoolError, ValueError) as exc:
        # Keep the original failure in front of the user; this one only needs a hand later.
        log.warning("could not remove the manifest of run %s (%s): delete runs/%s/manifest.json", run_id, exc, run_id)


def _skipped_note(skipped: int) -> str:
    if not skipped:
        return ""
    return f" ({skipped} files skipped: not {'/'.join(e.lstrip('.') for e in sorted(IMAGE_EXTENSIONS))})"


def _hint(run_id: str) -> str:
    return f"Its manifest is written; send the rest with `producer requeue --run {run_id} --missing`"
