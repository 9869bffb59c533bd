"""The worker loop: take a prepared batch, score it, write its results, ack it.

    while not stopped:
        job = prefetcher.take()          received, validated, fetched and decoded ahead
        process(job):
            bad message             → dead-letter at once (+ poison report)
            delivered too often     → dead-letter (it crashed or timed out every consumer)
            batch-level failure     → release with jittered exponential backoff, or dead-letter after
                                      max_attempts deliveries
            else: score → write results (durable) → ack → write the timing record

Acking only after the results are written means a crash anywhere leaves the message to come
back; results are keyed by (run_id, batch_id), so scoring a batch twice still yields one row
per image. Storage outages while writing or acking are waited out with backoff (the lease keeper
keeps renewing meanwhile); `step` is one iteration, start to finish, testable on its own.

In `run`, the write → ack → record of batch k happens on a finisher thread while batch k+1 is
scored: those are storage round trips (tens of milliseconds each against Azure), and an
accelerator waiting for them would idle for a good share of every batch. At most one batch is
being finished at a time, so a slow store slows scoring down instead of piling up batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np

from consumer.gpu_stats import GpuSampler, GpuShare
from consumer.lease import LeaseKeeper
from consumer.pipeline import Job, Prefetcher
from workpool.cancelled_runs import CancelledRuns
from workpool.errors import LeaseLostError, MessageError, TransientError, WorkpoolError
from workpool.queue import WorkQueue
from workpool.retry import Backoff, RetryPolicy, retry_transient
from workpool.runs import BatchRecord, PoisonReport, ResultRow, RunStore

log = logging.getLogger(__name__)

# How long a write or ack keeps retrying through a storage outage before the batch is left to
# come back on its own (its lease then runs out).
OUTAGE_PATIENCE_S = 300.0
PERSIST_POLICY = RetryPolicy(first_delay_s=0.5, max_delay_s=10.0, give_up_after_s=OUTAGE_PATIENCE_S)


def utcnow() -> datetime:
    return datetime.now(UTC)


# Runs a batch's write → ack → record, now or on the finisher thread.
Finish = Callable[[Callable[[], None]], None]


class Finisher:
    """One background thread finishing one batch at a time (see the module docstring).

    `submit` waits while the previous batch is still being finished. An unexpected error there
    (the expected ones are handled by the worker's own retry, release and poison paths) is
    raised again in the worker thread, by `raise_if_failed` (every turn of the loop), the next
    `submit` or the end of the block; leaving the block waits for the batch in progress.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="finish")
        self._pending: Future[None] | None = None

    def submit(self, work: Callable[[], None]) -> None:
        self.wait()
        self._pending = self._pool.submit(work)

    def raise_if_failed(self) -> None:
        """Raise now the error of a batch that has finished with one (not waiting for the next)."""
        if self._pending is not None and self._pending.done():
            self.wait()

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> Finisher:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=False)


# A failed batch comes back after a jittered pause (workpool/retry.py) whose ceiling is 2 s at its
# first failure, doubling up to 5 minutes: the batches of a model server that went down do not
# all return in the same second.
def release_backoff() -> Backoff:
    return Backoff(base_s=2.0, cap_s=300.0)


class Worker:
    def __init__(
        self,
        queue: WorkQueue,
        runs: RunStore,
        leases: LeaseKeeper,
        prefetcher: Prefetcher,
        *,
        worker_id: str,
        max_attempts: int,
        idle_exit_s: float | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        gpu: GpuSampler | None = None,
    ) -> None:
        self.queue = queue
        self.runs = runs
        self.leases = leases
        self.prefetcher = prefetcher
        self.worker_id = worker_id
        self.max_attempts = max_attempts
        self.idle_exit_s = idle_exit_s
        self.backoff = backoff or release_backoff()
        self._clock = clock
        self._now = now
        self._sleep = sleep
        self.gpu = gpu  # None: no GPU statistics (no NVML, or no GPU)
        self.images_processed = 0
        self.batches_processed = 0
        self.cancelled = CancelledRuns(runs)

    # --- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        with Finisher() as finisher:
            while not stop.is_set():
                finisher.raise_if_failed()
                if self.step(stop, finish=finisher.submit) is None and self.idle_expired():
                    log.info("worker %s: queue empty for %.0f s, exiting", self.worker_id, self.idle_exit_s)
                    return

    def step(self, stop: threading.Event, wait_s: float = 0.5, finish: Finish | None = None) -> Job | None:
        """Take one prepared job and process it; None when there was nothing to take."""
        job = self.prefetcher.take(wait_s)
        if job is None:
            return None
        if stop.is_set():
            return job  # stopping: shutdown releases it with everything else held
        self.process(job, stop, finish)
        return job

    def idle_expired(self) -> bool:
        since = self.prefetcher.empty_since
        return (
            self.idle_exit_s is not None
            and since is not None
            and not self.leases.held()
            and self._clock() - since >= self.idle_exit_s
        )

    # --- one batch ---------------------------------------------------------------------------
    def process(self, job: Job, stop: threading.Event, finish: Finish | None = None) -> None:
        """One batch: triage, score, then write, ack, record (handed to `finish` when given)."""
        if self._triage(job, stop):
            return
        started, started_at = time.perf_counter(), self._now()
        log.debug("%s attempt=%d scoring %d images", self._where(job), job.message.dequeue_count, len(job.images))
        try:
            rows = self.score(job)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # out of memory, a broken model, a task bug (even SystemExit): retry
            self.fail(job, exc, stop)
            return
        scored_at, score_s = self._now(), time.perf_counter() - started
        gpu = self.gpu.share() if self.gpu is not None else None

        def write_ack_record() -> None:
            if self._write_and_ack(job, rows, stop):
                self._record(job, rows, stop, started_at=started_at, scored_at=scored_at, score_s=score_s,
                             total_s=time.perf_counter() - started, gpu=gpu)  # fmt: skip

        if finish is None:
            write_ack_record()
        else:
            finish(write_ack_record)

    def _triage(self, job: Job, stop: threading.Event) -> bool:
        """Dispose of a job that must not be scored; True when it was."""
        attempt = job.message.dequeue_count
        if job.batch is not None and job.batch.run_id in self.cancelled:
            self.drop_cancelled(job, stop)
        elif isinstance(job.failure, MessageError):
            self.poison(job, str(job.failure), stop)
        elif attempt > self.max_attempts or (job.failure is None and job.task is None):
            # Checked before preparing too (`Preparer.prepare`): a batch whose preparing kills
            # consumers is dead-lettered here without being prepared again.
            self.poison(job, f"delivered {attempt} times without being finished (consumers crashed or timed out)", stop)
        elif job.failure is not None:
            self.fail(job, job.failure, stop)
        elif job.message_id in self.leases.lost:
            # It waited in the prefetch buffer through an outage longer than its lease; another
            # consumer has it now, so scoring it here would only be wasted work.
            log.warning("%s lease lost before scoring; skipped", self._where(job))
        else:
            return False
        return True

    def _write_and_ack(self, job: Job, rows: list[ResultRow], stop: threading.Event) -> bool:
        """Results first, durably; then the ack. True when the batch is acked."""
        assert job.batch is not None
        run_id, batch_id = job.batch.run_id, job.batch.batch_id
        try:
            written = self._persist(lambda: self.runs.write_results(run_id, batch_id, rows), "write results", stop)
        except WorkpoolError as exc:  # e.g. the result container was deleted: retry later
            self.fail(job, exc, stop)
            return False
        if not written:
            self.leases.finish(job.message_id, lambda m: None)  # stop renewing: it comes back
            return False
        try:
            if self._persist(lambda: self._ack(job), "ack", stop):
                return True
        except LeaseLostError:
            log.warning(
                "%s lease lost before the ack; another consumer will redo the batch (results are overwritten, "
                "not duplicated)",
                self._where(job),
            )
        return False

    def _record(
        self,
        job: Job,
        rows: list[ResultRow],
        stop: threading.Event,
        *,
        started_at: datetime,
        scored_at: datetime,
        score_s: float,
        total_s: float,
        gpu: GpuShare | None = None,
    ) -> None:
        """Count the batch, write its timing record and its log line."""
        assert job.batch is not None
        acked_at = self._now()
        failed = sum(1 for r in rows if r.status == "error")
        record = BatchRecord(
            run_id=job.batch.run_id,
            batch_id=job.batch.batch_id,
            worker=self.worker_id,
            attempt=job.message.dequeue_count,
            images=len(rows),
            images_ok=len(rows) - failed,
            images_failed=failed,
            dequeued_at=job.dequeued_at,
            scored_at=scored_at,
            acked_at=acked_at,
            images_per_s=len(rows) / max((acked_at - started_at).total_seconds(), 1e-9),
            started_at=started_at,
            prepare_s=round(job.prepare_s, 6),
            score_s=round(score_s, 6),
            gpu_busy_pct=None if gpu is None else round(gpu.busy_pct, 1),
            gpu_memory_mb=None if gpu is None else round(gpu.memory_mb, 1),
            gpu_window_s=None if gpu is None else round(gpu.window_s, 3),
        )
        self.images_processed += len(rows)
        self.batches_processed += 1
        # The record is bookkeeping for reports: the batch is done even if it cannot be written.
        try:
            if not self._persist(lambda: self.runs.write_batch_record(record), "write batch record", stop):
                log.error("%s timing record not written", self._where(job))
        except WorkpoolError as exc:
            log.error("%s timing record not written: %s", self._where(job), exc)
        log.info(
            "%s attempt=%d images=%d ok=%d failed=%d prepare=%.3fs score=%.3fs total=%.3fs %.1f images/s",
            self._where(job),
            record.attempt,
            record.images,
            record.images_ok,
            failed,
            job.prepare_s,
            score_s,
            total_s,
            record.images_per_s,
        )

    def score(self, job: Job) -> list[ResultRow]:
        """Predictions for the readable images, error rows for the rest, in message order."""
        assert job.batch is not None and job.task is not None
        readable = [image for image in job.images if image.array is not None]
        predictions: list[Any] = []
        if readable:
            batch = job.stacked  # stacked on the prefetch thread
            if batch is None:
                batch = np.stack([image.array for image in readable if image.array is not None])
            predictions = job.task.postprocess(job.task.predict(batch), len(readable))
            if len(predictions) != len(readable):
                raise WorkpoolError(f"task returned {len(predictions)} predictions for {len(readable)} images")
        by_name = iter(predictions)
        rows = []
        for image in job.images:
            if image.array is not None:
                rows.append(
                    ResultRow(
                        image=image.name,
                        status="ok",
                        predictions=next(by_name),
                        batch_id=job.batch.batch_id,
                        worker=self.worker_id,
                    )
                )
            else:
                rows.append(
                    ResultRow(
                        image=image.name,
                        status="error",
                        error=image.error,
                        batch_id=job.batch.batch_id,
                        worker=self.worker_id,
                    )
                )
        return rows

    # --- failures ------------------------------------------------------------------------------
    def fail(self, job: Job, exc: BaseException, stop: threading.Event) -> None:
        attempt = job.message.dequeue_count
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, WorkpoolError) else str(exc)
        where = self._where(job)
        if attempt >= self.max_attempts:
            self.poison(job, f"failed {attempt} times; last error: {reason}", stop)
            return
        delay = self.backoff.whole_seconds(attempt - 1)
        log.warning("%s attempt=%d failed, retrying in %d s: %s", where, attempt, delay, reason)
        try:
            # Through an outage the release waits for storage to come back, so the batch returns
            # after its backoff rather than after its whole visibility timeout.
            if self._persist(lambda: self.leases.finish(job.message_id, lambda m: self.queue.release(m, delay)),
                             "release", stop):  # fmt: skip
                return
        except WorkpoolError as release_error:
            log.warning("%s could not be released (%s)", where, release_error)
        # Not released: stop renewing, and the message comes back when its lease runs out.
        self.leases.finish(job.message_id, lambda m: None)

    def poison(self, job: Job, reason: str, stop: threading.Event) -> None:
        attempt = job.message.dequeue_count
        log.error("%s attempt=%d dead-lettered: %s", self._where(job), attempt, reason)
        if job.batch is not None:
            report = PoisonReport(
                run_id=job.batch.run_id,
                batch_id=job.batch.batch_id,
                reason=reason,
                attempts=attempt,
                worker=self.worker_id,
            )
            # The report goes first: a crash before the dead-letter leaves a report and a message
            # that comes back, never a poisoned batch nobody can find.
            try:
                self._persist(lambda: self.runs.write_poison(report), "write poison report", stop)
            except WorkpoolError as exc:
                log.error("%s poison report not written: %s", self._where(job), exc)
        try:
            self._persist(
                lambda: self.leases.finish(job.message_id, lambda m: self.queue.dead_letter(m, reason)),
                "dead-letter",
                stop,
            )
        except WorkpoolError as exc:
            log.error("%s could not be dead-lettered (%s); it returns when its lease expires", self._where(job), exc)
            self.leases.finish(job.message_id, lambda m: None)

    def drop_cancelled(self, job: Job, stop: threading.Event) -> None:
        """A batch of a cancelled run (in flight during the cancel, or back again): deleted unscored."""
        log.info("%s dropped unscored: the run is cancelled", self._where(job))
        try:
            if self._persist(lambda: self._ack(job), "ack", stop):
                return
        except WorkpoolError as exc:  # lease lost: whoever holds it now drops it too
            log.warning("%s could not be dropped (%s)", self._where(job), exc)
        self.leases.finish(job.message_id, lambda m: None)

    def _where(self, job: Job) -> str:
        if job.batch is None:
            return f"message={job.message_id} worker={self.worker_id}"
        return f"run={job.batch.run_id} batch={job.batch.batch_id} worker={self.worker_id}"

    def _ack(self, job: Job) -> None:
        if not self.leases.finish(job.message_id, self.queue.ack):
            raise LeaseLostError(f"message {job.message_id} is no longer ours")

    def _persist(self, operation: Callable[[], object], what: str, stop: threading.Event) -> bool:
        """Run a storage operation, waiting out outages with backoff; False if it never succeeded."""
        try:
            retry_transient(operation, what, PERSIST_POLICY, stop=stop, sleep=self._sleep, clock=self._clock)
        except TransientError:
            return False
        return True
