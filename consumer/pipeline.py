"""Receive, fetch and decode batches ahead of the one being scored.

A `Job` is one received message on its way through the consumer. `Preparer.prepare` turns a
message into a ready job: validate it, load its task (model cached), download its images
concurrently, decode/resize/preprocess them in a thread pool and stack them into the batch the
model will see. `Prefetcher` runs that in a background thread up to `prefetch_batches` jobs
ahead, so the accelerator never waits for I/O, decoding or that copy. The bound keeps memory
flat: at most `prefetch_batches` prepared batches wait, however long the run.

Failures are sorted here, never raised past a job:
- a message that can never succeed (not JSON, wrong schema, unknown or disallowed task, no
  manifest for its run or disagreeing with it, a source, model or labels this consumer may not
  read: `consumer.access`) → `job.failure` is a `MessageError` (poison at once);
- a message delivered more than `max_attempts` times is not prepared at all (its preparing may be
  what kills consumers): the worker poisons it; a redelivered one is prepared only once every
  other batch in hand is finished, so a crash while preparing it loses no other batch;
- anything else that stops the whole batch (model will not load, storage unreachable, a task's
  code raising anything at all, `SystemExit` included) → `job.failure` holds it (release with
  backoff, poison after `max_attempts`, with the reason);
- one unreadable, missing or oversized image → that image's `error` (an error row; the batch goes on).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue as queue_module
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from consumer.access import ReadPolicy
from consumer.images import decode_image
from consumer.lease import LeaseKeeper
from consumer.tasks import ScoringTask, TaskCache
from workpool.errors import ImageError, MessageError, NotFoundError, StorageUnavailableError, WorkpoolError
from workpool.messages import BatchMessage
from workpool.queue import Received, WorkQueue
from workpool.retry import Backoff, RetryPolicy, retry_transient
from workpool.runs import Manifest, RunStore
from workpool.settings import Settings
from workpool.storage import ObjectStore, open_location, open_result_store
from workpool.storage.base import ObjectTooLargeError
from workpool.storage.local import NotRegularFileError

log = logging.getLogger(__name__)

# Image downloads are I/O: more of them in flight than cores.
FETCH_THREADS = 16
# A blob read that fails because storage is unreachable is retried (0.5 s, 1 s, 2 s, ... up to
# 8 s apart) for this long before the batch is given up for a later attempt: long enough to ride
# out a storage blip without spending one of the batch's attempts on it.
FETCH_POLICY = RetryPolicy(first_delay_s=0.5, max_delay_s=8.0, give_up_after_s=60.0)
# Niceness added to the fetch and decode threads (see `lower_thread_priority`).
PREPARE_NICENESS = 10


class PrepareError(WorkpoolError):
    """Something other than an `Exception` (`SystemExit`, …) was raised while preparing a batch."""


@dataclass
class ImageInput:
    name: str
    array: npt.NDArray[Any] | None = None  # the task's input: uint8 pixels for the built-in tasks
    error: str | None = None


@dataclass
class Job:
    message: Received
    dequeued_at: datetime
    batch: BatchMessage | None = None
    task: ScoringTask | None = None
    images: list[ImageInput] = field(default_factory=list)
    failure: Exception | None = None
    prepare_s: float = 0.0
    # The readable images' inputs as one batch array, in message order, filled while they decode
    # (`BatchRows`), not copied together on the scoring thread while the accelerator waits.
    stacked: npt.NDArray[Any] | None = None

    @property
    def message_id(self) -> str:
        return self.message.id


class Preparer:
    """Turns a received message into a Job ready to score (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        tasks: TaskCache,
        *,
        runs: RunStore | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.tasks = tasks
        self._sleep = sleep
        threads = settings.decode_threads or os.cpu_count() or 1
        nice = lower_thread_priority
        self.decode_pool = ThreadPoolExecutor(threads, thread_name_prefix="decode", initializer=nice)
        self.fetch_pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch", initializer=nice)
        self._sources: dict[str, tuple[ObjectStore, str]] = {}
        self._runs = runs  # the worker's run store, for manifests; opened on first use if not given
        self._manifests: dict[str, Manifest] = {}
        self.policy = ReadPolicy(settings)

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.fetch_pool.shutdown(wait=False, cancel_futures=True)

    def prepare(self, message: Received, dequeued_at: datetime | None = None) -> Job:
        started = time.perf_counter()
        job = Job(message=message, dequeued_at=dequeued_at or datetime.now(UTC))
        try:
            batch = BatchMessage.decode(message.body)
            self._check_against_manifest(batch)
            job.batch = batch
            if message.dequeue_count > self.settings.max_attempts:
                return job  # not prepared again: the worker dead-letters it (see the module docstring)
            self.policy.check_batch(batch)
            job.task = self.tasks.get(job.batch.task, job.batch.model, job.batch.labels)
            job.images, job.stacked = self._load_images(job.batch, job.task)
        except Exception as exc:  # sorted by the worker: poison, retry or give up
            job.failure = exc
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit & co. from a task's code: this batch's failure only
            job.failure = PrepareError(f"{type(exc).__name__} raised while preparing the batch: {exc!s:.300}")
        finally:
            job.prepare_s = time.perf_counter() - started
        return job

    def _check_against_manifest(self, batch: BatchMessage) -> None:
        """A message must be one of its run's batches, as the producer wrote it in the manifest.

        Anyone who can write to the queue could otherwise send a batch that reads another
        container or folder, runs another task, or overwrites a real batch's results. A run with
        no manifest is refused (the producer writes it before the first message), and its absence
        is never remembered: the next message of that run looks again.
        """
        manifest = self._manifest(batch.run_id)
        if manifest is None:
            raise MessageError(
                f"run {batch.run_id} has no manifest in the result store: messages are accepted only for runs "
                "enqueued by `producer enqueue` (which writes it first)"
            )
        expected = manifest.batches.get(batch.batch_id)
        if expected is None:
            raise MessageError(f"batch {batch.batch_id} is not in the manifest of run {batch.run_id}")
        for name in ("source", "task", "model", "labels"):
            if getattr(batch, name) != getattr(manifest, name):
                raise MessageError(
                    f"batch {batch.batch_id}: {name} {getattr(batch, name)!r} differs from the manifest "
                    f"of run {batch.run_id} ({getattr(manifest, name)!r})"
                )
        if batch.images != expected:
            raise MessageError(f"batch {batch.batch_id}: images differ from the manifest of run {batch.run_id}")

    def _manifest(self, run_id: str) -> Manifest | None:
        if run_id not in self._manifests:
            if self._runs is None:
                self._runs = RunStore(open_result_store(self.settings))
            try:
                self._manifests[run_id] = self._runs.read_manifest(run_id)
            except NotFoundError:
                return None  # not remembered: a run enqueued later is found then
        return self._manifests[run_id]

    def _source(self, uri: str) -> tuple[ObjectStore, str]:
        if uri not in self._sources:
            self._sources[uri] = open_location(self.settings, uri)
        return self._sources[uri]

    def _load_images(self, batch: BatchMessage, task: ScoringTask) -> tuple[list[ImageInput], npt.NDArray[Any] | None]:
        """Each image's input (or error), and the readable ones stacked (see `BatchRows`)."""
        store, prefix = self._source(batch.source)
        keys = [f"{prefix.rstrip('/')}/{name}" if prefix else name for name in batch.images]
        fetches = {self.fetch_pool.submit(self._fetch, store, key): i for i, key in enumerate(keys)}
        decodes: dict[Future[npt.NDArray[Any]], int] = {}
        inputs = [ImageInput(name) for name in batch.images]
        # Decode each image as soon as its bytes arrive, while the others still download.
        for done in as_completed(fetches):
            i = fetches[done]
            try:
                data = done.result()
            except NotRegularFileError:
                inputs[i].error = "not a regular file (a device, FIFO or socket is never read)"
                continue
            except NotFoundError:
                inputs[i].error = "not found"
                continue
            except ObjectTooLargeError as exc:
                inputs[i].error = f"too large: {exc} (max_image_bytes)"
                continue
            decodes[self.decode_pool.submit(_decode, data, task)] = i
        # Each decoded image goes into its row of the batch as it completes, while others decode.
        rows = BatchRows(sorted(decodes.values()))
        for future in as_completed(decodes):
            i = decodes[future]
            try:
                inputs[i].array = rows.put(i, future.result())
            except ImageError as exc:
                inputs[i].error = str(exc)
            except Exception as exc:  # a task's preprocess failing on one image
                inputs[i].error = f"preprocessing failed: {type(exc).__name__}: {exc}"
        return inputs, rows.stacked(inputs)

    def _fetch(self, store: ObjectStore, key: str) -> bytes:
        # Quietly: sixteen fetch threads would otherwise log every blink of an outage sixteen times.
        return retry_transient(
            lambda: store.read_capped(key, self.settings.max_image_bytes),
            f"fetch {key}",
            FETCH_POLICY,
            log_level=logging.DEBUG,
            sleep=self._sleep,
        )


class BatchRows:
    """The batch array, filled row by row as images are decoded (in message order of `indexes`).

    Copying each image into the batch as it completes overlaps the copy with the decoding of
    the others, instead of one copy of the whole batch after the last (on the scoring thread, it
    would keep the accelerator waiting). `put` returns the image's row, a view into the batch.
    Images of another shape or type than the first (a custom task keeping decoded sizes) stop
    the filling: the worker then stacks the arrays itself, and refuses differing shapes.
    """

    def __init__(self, indexes: list[int]) -> None:
        self._row_of = {index: row for row, index in enumerate(indexes)}
        self._batch: npt.NDArray[Any] | None = None
        self._filling = True

    def put(self, index: int, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if self._batch is None:
            self._batch = np.empty((len(self._row_of), *array.shape), dtype=array.dtype)
        if not (self._filling and array.shape == self._batch.shape[1:] and array.dtype == self._batch.dtype):
            self._filling = False
            return array
        row: npt.NDArray[Any] = self._batch[self._row_of[index]]
        row[...] = array
        return row

    def stacked(self, inputs: list[ImageInput]) -> npt.NDArray[Any] | None:
        """The readable images' rows, in message order; None when not filled (see above)."""
        if self._batch is None or not self._filling:
            return None
        readable = [self._row_of[i] for i, image in enumerate(inputs) if image.array is not None]
        if len(readable) == len(self._row_of):
            return self._batch
        compact = self._batch[readable]  # some failed to decode: their rows are left out (a copy)
        for image, row in zip((image for image in inputs if image.array is not None), compact, strict=True):
            image.array = row
        return compact


def lower_thread_priority() -> None:
    """Make the calling thread yield the CPU to the model (Linux: threads have their own nice).

    Decoding batch k+1 has the whole scoring time of batch k to finish, but on a machine where
    the model runs on the CPU its threads move in lock-step: one preempted by a decode thread
    stalls the others. At a lower priority, decoding fills the gaps instead.
    """
    # Not Linux, or not permitted: run at normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREPARE_NICENESS)


def _decode(data: bytes, task: ScoringTask) -> npt.NDArray[Any]:
    return task.preprocess(decode_image(data, task.input_size))


class Prefetcher:
    """Receives and prepares jobs in a background thread, at most `depth` ahead.

    With depth 0 nothing runs in the background: `take` receives and prepares on the caller's
    thread. `empty_since` is when the queue was last seen empty with nothing in hand (None while
    work is flowing), for `--idle-exit-s`.
    """

    def __init__(
        self,
        queue: WorkQueue,
        leases: LeaseKeeper,
        preparer: Preparer,
        *,
        depth: int,
        visibility_timeout_s: int,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.leases = leases
        self.preparer = preparer
        self.depth = depth
        self.visibility_timeout_s = visibility_timeout_s
        self.poll_s = poll_s
        self._clock = clock
        self.empty_since: float | None = clock()
        self._ready: queue_module.Queue[Job | BaseException] = queue_module.Queue()
        self._slots = threading.Semaphore(max(depth, 1))
        self._stop = threading.Event()
        self._count_delivery = True
        self._thread: threading.Thread | None = None
        self._outage_since: float | None = None
        self._failed_receives = 0  # in a row: the outage's back-off attempt
        # Polls while the queue is unreachable: jittered, with a ceiling growing from 1 s to 10 s.
        self.outage_backoff = Backoff(base_s=1.0, cap_s=10.0)

    # --- background mode ---------------------------------------------------------------------
    def start(self) -> None:
        self.empty_since = self._clock()  # idle from now, not from construction (warm-up came between)
        if self.depth > 0:
            self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
            self._thread.start()

    def stop(self, *, count_delivery: bool = True) -> None:
        """Stop receiving. A batch received meanwhile is given straight back, its delivery
        forgiven once any stop said `count_delivery=False` (a preemption)."""
        if not count_delivery:
            self._count_delivery = False
        self._stop.set()
        self._slots.release()  # wake the thread if it waits for a slot

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def take(self, timeout_s: float) -> Job | None:
        """The next prepared job, or None when none came within `timeout_s` (queue empty)."""
        if self.depth == 0:
            job = self.receive_one()
            if job is None:
                time.sleep(min(timeout_s, self._idle_wait_s()))
            return job
        try:
            item = self._ready.get(timeout=timeout_s)
        except queue_module.Empty:
            return None
        self._slots.release()
        if isinstance(item, BaseException):
            raise item
        return item

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._slots.acquire()
                if self._stop.is_set():
                    return
                job = None
                while job is None and not self._stop.is_set():
                    job = self.receive_one()
                    if job is None:
                        self._stop.wait(self._idle_wait_s())
                if job is not None and self._stop.is_set():
                    # Received while stopping: give it straight back.
                    release = functools.partial(self.queue.release, delay_s=0, count_delivery=self._count_delivery)
                    self.leases.finish(job.message_id, release)
                elif job is not None:
                    self._ready.put(job)
        except BaseException as exc:  # handed to the worker, which stops the consumer
            self._ready.put(exc)

    def drain(self) -> list[Job]:
        """Prepared jobs not yet taken (at shutdown, to release them)."""
        jobs: list[Job] = []
        while True:
            try:
                item = self._ready.get_nowait()
            except queue_module.Empty:
                return jobs
            if isinstance(item, Job):
                jobs.append(item)

    # --- one receive ---------------------------------------------------------------------------
    def receive_one(self) -> Job | None:
        """Receive one message and prepare it; None when the queue is empty or unreachable."""
        try:
            messages = self.queue.receive(1, visibility_timeout_s=self.visibility_timeout_s)
        except StorageUnavailableError as exc:
            if self._outage_since is None:
                log.warning("queue unreachable, will keep trying: %s", exc)
                self._outage_since = self._clock()
            self._failed_receives += 1
            return None
        if self._outage_since is not None:
            log.info("queue reachable again after %.1f s", self._clock() - self._outage_since)
            self._outage_since = None
            self._failed_receives = 0
        if not messages:
            if self.empty_since is None:
                self.empty_since = self._clock()
            return None
        self.empty_since = None
        message = messages[0]
        dequeued_at = datetime.now(UTC)
        self.leases.hold(message)
        if message.dequeue_count > 1:
            self._wait_until_alone(message.id)
        return self.preparer.prepare(message, dequeued_at)

    def _wait_until_alone(self, message_id: str) -> None:
        """Hold a redelivered message until every other batch in hand is finished (acked or released).

        A message that comes back may be one whose preparing killed the last consumer (a task's
        code calling `os._exit`, a decoder crashing the interpreter). Prepared alone, it can take
        no innocent batch down with it, so the batches around it are not redelivered with it
        until they too reach `max_attempts`. Its own lease is renewed meanwhile. The wait is
        bounded by the visibility timeout: a batch in hand that takes longer does not hold it up.
        """
        deadline = self._clock() + self.visibility_timeout_s
        while set(self.leases.held()) - {message_id} and not self._stop.is_set() and self._clock() < deadline:
            self._stop.wait(0.02)

    def _idle_wait_s(self) -> float:
        if self._failed_receives:
            # Back off while storage is down (jittered: the pool's nodes do not poll in step).
            return self.outage_backoff.delay_s(self._failed_receives - 1)
        return self.poll_s
