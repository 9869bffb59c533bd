"""`workpool.Pool`: the pool of a queue, driven from Python. The CLIs are its thin shell.

from workpool import Pool
pool = Pool(batch_size=16)                  # settings as the CLIs read them, plus overrides
run = pool.enqueue("photos/", model="models/m.keras")
pool.launch(nodes=2)
report = run.wait()                         # a DrainReport
table = run.results()                       # a pyarrow.Table, one row per image
pool.teardown()
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestration.api.display import Info
from orchestration.api.options import Autoscale
from orchestration.api.run import Run
from orchestration.api.tables import BenchmarkTable
from orchestration.autoscale import process as autoscale_process
from orchestration.backends import open_launcher
from orchestration.deployment import resolve_backend
from orchestration.launcher import Launcher, PlannedRequest
from orchestration.lifecycle import PoisonEntry, PurgeResult, list_poison, list_runs, purge_poison
from orchestration.pool import launch_until_drained, pending_runs
from orchestration.pool_settings import drift_warning, record_pool_settings, settings_drift
from orchestration.reports.drain import DrainReport
from orchestration.reports.status import StatusReader, cluster_json
from orchestration.tools.benchmark import BenchmarkPlan, run_benchmark
from workpool.errors import NotFoundError, UsageError
from workpool.pool_events import record_size_change, utcnow
from workpool.queue import open_queue
from workpool.runs import RunStore
from workpool.settings import Settings, load_settings
from workpool.storage import open_result_store


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Pool:
    """The pool of nodes that score one queue, and the runs on that queue.

    `Pool(**overrides)` reads the settings exactly as the CLIs do (WORKPOOL_* variables, the
    `config` file or WORKPOOL_CONFIG), then applies the keyword overrides by setting name, e.g.
    `Pool(queue="photos", batch_size=32)`. `backend` picks where nodes run (local, batchai,
    azure-batch); by default the one that launched this queue's pool, else local. A bad setting
    raises `workpool.errors.SettingsError` naming it.
    """

    def __init__(self, *, backend: str | None = None, config: str | Path | None = None, **overrides: Any) -> None:
        config_file = None if config is None else Path(config)
        self._init(load_settings(config_file, **overrides), backend, config_file)

    @classmethod
    def from_settings(cls, settings: Settings, *, backend: str | None = None, config: Path | None = None) -> Pool:
        """A pool on settings already loaded (what the CLIs do after reading their flags)."""
        pool = cls.__new__(cls)
        pool._init(settings, backend, config)
        return pool

    def _init(self, settings: Settings, backend: str | None, config: Path | None) -> None:
        self.settings = settings
        self._backend = backend
        self._config = config
        self.say: Callable[[str], None] = _stderr  # where progress lines go (the CLIs: stderr)

    # --- what the pool is ---------------------------------------------------------------------
    @property
    def queue(self) -> str:
        return self.settings.queue

    @property
    def backend(self) -> str:
        """Where this pool's nodes run: as given, else the backend that launched the queue's pool, else local."""
        return resolve_backend(self.settings, self._backend)

    def launcher(self, backend: str | None = None) -> Launcher:
        return open_launcher(backend or self.backend, self.settings)

    def _runs(self) -> RunStore:
        return RunStore(open_result_store(self.settings))

    def __repr__(self) -> str:
        return f"Pool(queue={self.queue!r}, backend={self.backend!r})"

    # --- runs -----------------------------------------------------------------------------------
    def enqueue(
        self,
        source: str | Path,
        *,
        run: str | None = None,
        task: str = "classification",
        model: str | Path | None = None,
        labels: str | Path | None = None,
        batch_size: int | None = None,
        limit: int | None = None,
    ) -> Run:
        """List `source` (a folder, `az://container/prefix`, or `@list.txt`), write the run's manifest,
        send one message per batch; the Run (its `.summary` says what was sent)."""
        from producer.enqueue import EnqueueRequest, enqueue
        from producer.validate import with_batch_size

        settings = with_batch_size(self.settings, batch_size)
        request = EnqueueRequest(
            source=str(source),
            run_id=run,
            task=task,
            model=None if model is None else str(model),
            labels=None if labels is None else str(labels),
            limit=limit,
        )
        summary = enqueue(settings, request)
        return Run(self, summary.run_id, summary)

    def run(self, run_id: str) -> Run:
        """The run `run_id` (UsageError if the result store has no such run)."""
        try:
            self._runs().read_manifest(run_id)
        except NotFoundError as exc:
            raise UsageError(str(exc)) from None
        return Run(self, run_id)

    def runs(self, *, all_queues: bool = False) -> list[Run]:
        """The queue's runs, oldest first (`orchestration runs`); each Run's `.info` is its line there
        (images, batches done/poisoned, state: pending, running, done or cancelled)."""
        return [Run(self, info.run_id, info=info) for info in list_runs(self.settings, all_queues=all_queues)]

    def poison(self, run: str | None = None) -> list[PoisonEntry]:
        """Poisoned batches on this queue (or one run's): reason, attempts, when (`orchestration poison`)."""
        return list_poison(self.settings, run)

    def purge_poison(self, run: str | None = None) -> PurgeResult:
        """Remove poisoned batches: one run's, or every one on the queue with `run=None`
        (`orchestration poison --purge [--run ID | --all]`)."""
        return purge_poison(self.settings, run)

    # --- the nodes ------------------------------------------------------------------------------
    def _launch_backend(self) -> str:
        return self._backend or "local"

    @staticmethod
    def _size(nodes: int | None, autoscale: Autoscale | str | None) -> Autoscale | None:
        if (nodes is None) == (autoscale is None):
            raise UsageError("give --nodes N (a fixed size) or --autoscale MIN:MAX, one of them")
        return Autoscale.parse(autoscale) if isinstance(autoscale, str) else autoscale

    def plan_launch(
        self, nodes: int | None = None, *, autoscale: Autoscale | str | None = None, force: bool = False
    ) -> list[PlannedRequest]:
        """What `launch` would start or send (secrets masked), starting nothing."""
        scaling = self._size(nodes, autoscale)
        count = scaling.min_nodes if scaling is not None else nodes or 0
        return self.launcher(self._launch_backend()).describe(count, force=force)

    def launch(
        self, nodes: int | None = None, *, autoscale: Autoscale | str | None = None, force: bool = False
    ) -> Info:
        """Start `nodes` nodes running consumers on the queue, or (`autoscale="MIN:MAX"` or an
        `Autoscale`) the size the queue asks for and a detached autoscaler beside it. Returns
        once they are up, with the cluster's state."""
        scaling = self._size(nodes, autoscale)
        backend = self._launch_backend()
        if scaling is not None:
            settings = autoscale_process.with_finishing_nodes(self.settings)
            launcher = open_launcher(backend, settings)
            scaler = autoscale_process.build(
                settings,
                launcher,
                scaling.limits(settings),
                deadline=scaling.deadline_at(),
                interval_s=scaling.interval_s,
            )
            requested_at = utcnow()
            size = autoscale_process.launch_with_autoscaler(scaler)
            record_pool_settings(self.settings)
            record_size_change(
                settings, "launch", backend, size, at=requested_at, reason=f"launch --autoscale {scaling.describe()}"
            )
            pid = autoscale_process.start_detached(
                settings, backend, scaling.min_nodes, scaling.max_nodes, scaling.deadline_at(), self._config,
                scaling.detached_args(settings),
            )  # fmt: skip
            self.say(
                f"launched {size} node(s) on {backend} for queue {self.queue}; autoscaler pid {pid} sizes it "
                f"between {scaling.min_nodes} and {scaling.max_nodes} (log: {autoscale_process.log_path(settings)})"
            )
        else:
            assert nodes is not None
            launcher = self.launcher(backend)
            requested_at = utcnow()
            launcher.launch(nodes, force=force)
            record_pool_settings(self.settings)
            record_size_change(self.settings, "launch", backend, nodes, at=requested_at, reason="launch --nodes")
            self.say(f"launched {nodes} node(s) on {backend} for queue {self.queue}")
        return Info(f"{backend} pool of queue {self.queue}", cluster_json(launcher.state()))

    def launch_until_drained(
        self,
        nodes: int | None = None,
        *,
        autoscale: Autoscale | str | None = None,
        runs: Sequence[str] | None = None,
        force: bool = False,
        timeout_s: float | None = None,
    ) -> list[DrainReport]:
        """Launch, wait until `runs` (default: the queue's pending runs) have drained, tear down
        (whatever goes wrong, Ctrl-C included); their drain reports."""
        scaling = self._size(nodes, autoscale)
        backend = self._launch_backend()
        wanted = None if runs is None else list(runs)
        if scaling is None:
            assert nodes is not None
            return launch_until_drained(
                self.settings, self.launcher(backend), nodes, wanted, timeout_s=timeout_s, force=force, say=self.say
            )
        settings = autoscale_process.with_finishing_nodes(self.settings)
        launcher = open_launcher(backend, settings)
        scaler = autoscale_process.build(
            settings, launcher, scaling.limits(settings), deadline=scaling.deadline_at(), interval_s=scaling.interval_s
        )
        waiting = pending_runs(settings, scaler.runs) if wanted is None else wanted
        try:
            return autoscale_process.autoscale_until_drained(scaler, waiting, say=self.say, timeout_s=timeout_s)
        finally:
            launcher.teardown()
            record_size_change(settings, "teardown", backend, 0, reason="drained (launch --autoscale --wait)")
            self.say(f"tore down the {backend} pool")

    def scale(self, nodes: int, *, force: bool = False) -> None:
        """Grow or shrink the running pool to `nodes` (extras stop gracefully, their batch released)."""
        name = self.backend
        if changes := settings_drift(self.settings):  # new nodes run with the pool's settings: say which differ
            self.say(drift_warning(changes))
        requested_at = utcnow()
        self.launcher(name).scale(nodes, force=force)
        record_size_change(self.settings, "scale", name, nodes, at=requested_at, reason="scale --nodes")
        self.say(f"scaled the {name} pool of queue {self.queue} to {nodes} node(s)")

    def teardown(self, *, delete: bool = False) -> None:
        """Stop the autoscaler, then every node (in-flight batches are released), and forget the pool."""
        name = self.backend
        # The autoscaler first: it would otherwise scale the pool back up while it is torn down.
        if (stopped := autoscale_process.stop_detached(self.settings)) is not None:
            self.say(f"stopped the autoscaler (pid {stopped})")
        self.launcher(name).teardown(delete=delete)
        record_size_change(self.settings, "teardown", name, 0, reason="teardown")
        self.say(f"tore down the {name} pool of queue {self.queue}")

    def autoscale(self, options: Autoscale, stop: threading.Event) -> None:
        """Size the running pool from its queue in this thread until `stop` is set (`orchestration autoscale`)."""
        name = self.backend
        limits = options.limits(self.settings)
        until = options.deadline_at()
        scaler = autoscale_process.build(
            self.settings, self.launcher(name), limits, deadline=until, interval_s=options.interval_s
        )
        self.say(
            f"autoscaling the {name} pool of queue {self.queue} between {limits.min_nodes} and {limits.max_nodes} "
            "node(s)" + (f", deadline {until.isoformat(timespec='seconds')}" if until else "")
        )
        scaler.run(stop)

    # --- watching -------------------------------------------------------------------------------
    def status_reader(self, run: str | None = None) -> StatusReader:
        """What `status` and `status --watch` read (`run`: that run only)."""
        if run is not None:
            self.run(run)
        return StatusReader(self._runs(), open_queue(self.settings), self.launcher(), run)

    def status(self, run: str | None = None) -> Info:
        """Queue depth and poison count, nodes and their state, and per run (the content of `status --json`)."""
        return Info(f"Queue {self.queue}", self.status_reader(run).snapshot().to_json())

    # --- measuring ------------------------------------------------------------------------------
    def benchmark(
        self,
        source: str | Path | None = None,
        *,
        tiers: Sequence[int] = (1, 2, 4),
        images: int | None = None,
        task: str = "classification",
        model: str | Path | None = None,
        arch: str | None = None,
        labels: str | Path | None = None,
        batch_size: int | None = None,
        timeout_s: float | None = None,
    ) -> BenchmarkTable:
        """Time the same images at each node count: per tier a fresh run is enqueued, that many
        nodes launched, the drain waited for, the pool torn down. Needs an idle queue.

        Without `model` a random-weight `arch` (default inceptionv3) is built here; without
        `source`, `images` synthetic JPEGs (default 256) are written under <home> (local backend only).
        """
        from orchestration.tools.benchmark import parse_tiers
        from orchestration.tools.random_models import build_model
        from orchestration.tools.samples import write_samples

        tier_list = parse_tiers(",".join(str(t) for t in tiers))
        backend = self._launch_backend()
        count = 256 if images is None else images
        if arch is not None and model is not None:
            raise UsageError("give --arch or --model, not both")
        model_uri = None if model is None else str(model)
        if task == "classification" and model_uri is None:
            if backend != "local":
                raise UsageError("cluster nodes cannot read a model built here: give --model az://<container>/<path>")
            model_uri = str(build_model(arch or "inceptionv3", self.settings.home / "models"))
        elif arch is not None:
            model_uri = str(build_model(arch, self.settings.home / "models"))
        if source is None:
            if backend != "local":
                raise UsageError(
                    "cluster nodes cannot read images generated here: give --source az://<container>/<prefix>"
                )
            folder = self.settings.home.absolute() / "benchmark" / "images"
            write_samples(folder, count)
            source = folder
        plan = BenchmarkPlan(
            tiers=tier_list,
            images=count,
            source=str(source),
            task=task,
            model=model_uri,
            labels=None if labels is None else str(labels),
            backend=backend,
            batch_size=self.settings.batch_size if batch_size is None else batch_size,
            timeout_s=timeout_s,
        )
        return BenchmarkTable(run_benchmark(self.settings, plan, open_launcher, say=self.say))
