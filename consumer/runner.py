"""One consumer process: the queue, the lease keeper, the prefetcher and the worker, wired up.

Threads, and why there are several:
- the worker thread starts up (waits out unreachable storage, warms the model up) and then
  scores (TensorFlow calls block it for the length of a batch);
- the main thread only waits and handles signals, so SIGTERM is acted on at once even while a
  batch is being scored or start-up is still going (Python runs signal handlers on the main
  thread only);
- the prefetch thread receives and prepares the next batches; the lease thread renews.

Stopping: every way a consumer stops gives its batches back through ONE method,
`Consumer.give_back(count_delivery=..., finish_s=...)`:
- shutdown (SIGTERM, SIGINT, `--idle-exit-s`, a `--workers` parent that is gone, and a pool's
  scale-in, which is a SIGTERM to the node: local supervisor, Azure Batch task termination):
  `give_back(count_delivery=True, finish_s=WORKPOOL_STOP_FINISH_S)`;
- a preemption notice (consumer/preemption.py calls back, from its watcher thread):
  `give_back(count_delivery=False)`: at once, and not counted against `--max-attempts`.
It stops receiving, releases every held message (the one being scored and the prefetched ones)
so they are visible again at once, waits briefly for the worker and prefetch threads, and
releases whatever they took meanwhile. A batch caught mid-score is abandoned, not finished: its
results would arrive after its message was released, and another consumer is free to score it
immediately. A stop during start-up starts nothing more: no lease is taken after it.
With `finish_s` (`WORKPOOL_STOP_FINISH_S`, set on the nodes of an autoscaled pool) it first
releases the prefetched batches and gives the one being scored that long to be written and
acked, so a scale-in abandons nothing mid-score; a preemption notice during that wait cuts it
short and releases everything at once, uncounted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable

from consumer.gpu_stats import GpuSampler
from consumer.lease import LeaseKeeper
from consumer.pipeline import Prefetcher, Preparer
from consumer.preemption import PreemptionGuard, ScheduledEvent, record_preemption
from consumer.tasks import TaskCache
from consumer.warmup import warm_up
from consumer.worker import Worker
from workpool.errors import StorageUnavailableError, WorkpoolError
from workpool.queue import WorkQueue, open_queue
from workpool.retry import Backoff, RetryPolicy, retry_transient
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store

log = logging.getLogger(__name__)

# How long a stopping consumer waits for its worker thread (an idle one ends at once; one in
# the middle of a TensorFlow call is abandoned after this).
STOP_GRACE_S = 2.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def format_took(seconds: float) -> str:
    """H:MM:SS.ffffff, always with microseconds (str(timedelta) drops them when zero)."""
    micros = round(seconds * 1_000_000)
    hours, rest = divmod(micros, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    secs, micros = divmod(rest, 1_000_000)
    return f"{hours}:{minutes:02d}:{secs:02d}.{micros:06d}"


# Start-up waits out an unreachable account without giving up: there is nothing else to do.
STARTUP_POLICY = RetryPolicy(first_delay_s=1.0, max_delay_s=30.0, give_up_after_s=math.inf)


class Consumer:
    def __init__(
        self,
        settings: Settings,
        worker_id: str | None = None,
        *,
        queue: WorkQueue | None = None,
        tasks: TaskCache | None = None,
        backoff: Backoff | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.queue = queue or open_queue(settings)
        self.runs = RunStore(open_result_store(settings))
        self.tasks = tasks or TaskCache(settings)
        self.leases = LeaseKeeper(self.queue, settings.visibility_timeout_s)
        self.preparer = Preparer(settings, self.tasks, runs=self.runs)
        self.prefetcher = Prefetcher(
            self.queue,
            self.leases,
            self.preparer,
            depth=settings.prefetch_batches,
            visibility_timeout_s=settings.visibility_timeout_s,
            poll_s=poll_s,
        )
        self.worker = Worker(
            self.queue,
            self.runs,
            self.leases,
            self.prefetcher,
            worker_id=self.worker_id,
            max_attempts=settings.max_attempts,
            idle_exit_s=settings.idle_exit_s,
            backoff=backoff,
        )
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.abandoned = False
        self._threads: list[threading.Thread] = []
        self._worker_thread: threading.Thread | None = None
        # Held while the lease keeper and the prefetcher start, and by shutdown before it stops
        # them: either they started before the stop (and are stopped), or they never start.
        self._starting = threading.Lock()
        # One give-back at a time (shutdown on the main thread, a preemption notice on its own).
        self._giving_back = threading.Lock()
        # Set by a preemption notice: from then on no release counts as a delivery.
        self._forgiven = threading.Event()
        self.started = time.monotonic()
        # With WORKPOOL_SCHEDULED_EVENTS_URL: a preempted VM gives its batches back at once, uncounted.
        url = settings.scheduled_events_url
        self.preemption = PreemptionGuard(url, self._on_preemption) if url else None

    def prepare_storage(self) -> None:
        """Create the queue and result store if missing, waiting out an unreachable account.

        Credentials scoped to the work (a SAS that may process messages and write blobs, not
        create queues or containers) are refused here; that is fine when the producer created
        them, so a refusal is logged and the consumer goes on (a missing queue then fails the
        first receive, with its own clear error).
        """

        def create_both() -> None:
            for create in (self.queue.create, self.runs.store.ensure):
                try:
                    create()
                except StorageUnavailableError:
                    raise  # retried below
                except WorkpoolError as exc:
                    log.warning("could not create the queue or result store (%s); assuming it exists", exc)

        # An unreachable account at start is waited out for as long as it takes (a node may boot
        # before its network or storage is ready); a stop during the wait ends it at once.
        with contextlib.suppress(StorageUnavailableError):  # raised only once a stop was asked for
            retry_transient(
                create_both,
                "creating the queue and result store",
                STARTUP_POLICY,
                stop=self.stop_event,
                sleep=self.stop_event.wait,
            )

    def start(self) -> None:
        """Start the worker thread; start-up (storage, warm-up) happens there, not here."""
        self.started = time.monotonic()
        self._worker_thread = threading.Thread(target=self._work, name="worker", daemon=True)
        self._worker_thread.start()
        self._threads = [self._worker_thread]
        if self.preemption is not None:
            self.preemption.start()

    def _start_up(self) -> bool:
        """Everything before the first lease; False when a stop came first (nothing started)."""
        if self.stop_event.is_set():
            return False
        self.prepare_storage()
        warm_up(self.settings, self.tasks, self.runs, self.stop_event)  # load the models before the first lease
        with self._starting:
            if self.stop_event.is_set():
                return False
            self.worker.gpu = GpuSampler.start()  # None without NVML or GPU (consumer/gpu_stats.py)
            lease_thread = threading.Thread(target=self.leases.run, args=(self.stop_event,), name="lease", daemon=True)
            lease_thread.start()
            self.prefetcher.start()
            self._threads.append(lease_thread)
        return True

    def _work(self) -> None:
        try:
            if self._start_up():
                self.worker.run(self.stop_event)
        except BaseException as exc:  # reported by wait(); the CLI exits 1
            self.error = exc
            log.error("worker %s stopped on an error: %s", self.worker_id, exc)

    def wait(
        self,
        stop_when: Callable[[], str | None] = lambda: None,
        tick: Callable[[], None] = lambda: None,
        poll_s: float = 0.2,
    ) -> None:
        """Block until the worker ends, `request_stop` is called, or `stop_when` gives a reason
        (the CLI's: a signal was received); then shut down. `tick` runs on every poll."""
        assert self._worker_thread is not None
        while self._worker_thread.is_alive() and not self.stop_event.is_set():
            reason = stop_when()
            if reason is not None:
                log.info("worker %s: %s, releasing held batches and stopping", self.worker_id, reason)
                break
            tick()
            self._worker_thread.join(poll_s)
        self.shutdown()
        if self.preemption is not None:  # a preempted consumer stays until its VM goes
            withdrawn = self.preemption.hold(stop_when, self.worker_id)
            if withdrawn is not None:
                self.error = withdrawn

    def request_stop(self) -> None:
        self.stop_event.set()

    def give_back(self, *, count_delivery: bool = True, finish_s: float = 0.0) -> int:
        """Stop, and give every batch this consumer holds back to the queue; how many it released.

        The one stop path (see the module's docstring): stop receiving (and start nothing more if
        start-up is still going), optionally let the batch being scored finish for up to
        `finish_s`, release everything held, wait up to STOP_GRACE_S for the worker and prefetch
        threads, and release what they took meanwhile. `count_delivery=False` (a preemption)
        forgives the deliveries, also those of any later call. Safe to call from any thread, and
        more than once.
        """
        if not count_delivery:
            self._forgiven.set()  # before the stop: a shutdown that follows counts nothing either
        self.stop_event.set()
        with self._starting:  # after this, the worker thread starts nothing more
            pass
        self.prefetcher.stop(count_delivery=not self._forgiven.is_set())
        released = self._finish_in_hand(finish_s) if finish_s > 0 else 0
        with self._giving_back:
            counted = not self._forgiven.is_set()
            released += self.leases.release_all(count_delivery=counted)
            self.prefetcher.join(STOP_GRACE_S)
            if self._worker_thread is not None:
                self._worker_thread.join(STOP_GRACE_S)
                self.abandoned = self._worker_thread.is_alive()
            # Anything taken between the release above and the threads noticing the stop.
            released += self.leases.release_all(count_delivery=counted)
        return released

    def shutdown(self) -> None:
        released = self.give_back(count_delivery=True, finish_s=self.settings.stop_finish_s)
        if released:
            log.info("worker %s released %d held batch(es) for other consumers", self.worker_id, released)
        self.preparer.close()
        if self.worker.gpu is not None:
            self.worker.gpu.stop()

    def _on_preemption(self, event: ScheduledEvent, vm: str) -> None:
        """The preemption guard's callback: everything back at once, uncounted, and on the record."""
        released = self.give_back(count_delivery=False)
        log.warning(
            "worker %s: VM preempted (%s %s): released %d held batch(es) for other consumers, not counted as attempts",
            self.worker_id,
            event.event_type,
            event.event_id,
            released,
        )
        record_preemption(self.runs.store, event, released, queue=self.settings.queue, node=self.worker_id, vm=vm)

    def _finish_in_hand(self, finish_s: float) -> int:
        """Release the prefetched batches at once and give the batch being scored up to `finish_s`
        to be written and acked, so it is not abandoned mid-score (a pool's scale-in). A
        preemption notice meanwhile ends the wait. Returns how many batches it released."""
        worker = self._worker_thread
        if worker is None or not worker.is_alive() or self._forgiven.is_set():
            return 0
        self.prefetcher.join(STOP_GRACE_S)
        waiting = [job.message_id for job in self.prefetcher.drain()]
        released = sum(bool(self.leases.finish(m, lambda m: self.queue.release(m, 0))) for m in waiting)
        if released:
            log.info("worker %s released %d prefetched batch(es) for other consumers", self.worker_id, released)
        if not self.leases.held():
            return released  # idle, or still starting up: nothing to finish, stop at once
        log.info("worker %s finishing the batch in hand (up to %.0f s) before stopping", self.worker_id, finish_s)
        deadline = time.monotonic() + finish_s
        while worker.is_alive() and not self._forgiven.is_set() and (left := deadline - time.monotonic()) > 0:
            worker.join(min(left, 0.1))
        return released

    def run(self, stop_when: Callable[[], str | None] = lambda: None, tick: Callable[[], None] = lambda: None) -> None:
        reason = stop_when()
        if reason is not None:  # told to stop before it began: start nothing
            log.info("worker %s: %s before start-up, stopping", self.worker_id, reason)
            self.started = time.monotonic()
            return
        self.start()
        self.wait(stop_when, tick)

    @property
    def images_processed(self) -> int:
        return self.worker.images_processed

    def summary_line(self) -> str:
        took = format_took(time.monotonic() - self.started)
        return f"Worker {self.worker_id} Processed {self.images_processed} images, took {took}"
