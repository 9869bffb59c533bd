"""Azure Batch launcher (`--backend azure-batch`): a GPU pool, a job, one consumer task per node.

The live engine for `orchestration launch --nodes 32` (docs/azure.md walks through it), on the real
SDKs: azure-batch (pools, nodes, jobs, tasks) and, only for a pool with a user-assigned managed
identity, azure-mgmt-batch (only ARM sets an identity). This module decides *when* to send what;
the request bodies are pure functions in azure_batch_bodies.py (also what `--dry-run` prints), and
the checks before anything is sent, the same for launch and dry run, are in azure_batch_checks.py.

Pools: **start-task install** (default: the start task checks the sha256 of the wheel, bootstrap
and constraints `launch` uploaded to the node-files container, then installs; orchestration/wheel.py
and orchestration/node/bootstrap.sh) or **container pool** (`WORKPOOL_NODE_IMAGE`).
Shape: pool of N nodes (one task slot each) → job `WORKPOOL_BATCH_JOB` → tasks `consumer-0001…`
running `consumer run`; a preempted Spot node's task is requeued by Batch.

Resizes never race: a pool still resizing is stopped (stop-resize) and awaited before the next
resize or node removal, and a 409 is retried after that. Scale-in terminates the surplus
consumer tasks (SIGTERM: they release their batches) and removes exactly the nodes they ran on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from orchestration.backends import azure_batch_bodies as bodies
from orchestration.backends.azure_batch_checks import batch_client, check_launch, require_batch, spot_hint
from orchestration.backends.azure_batch_logs import task_file_source
from orchestration.backends.cluster_common import (
    Made,
    arm_client_options,
    cluster_errors,
    consumer_index,
    consumer_name,
    default_credential,
    refused_tasks,
    service_error,
    text_of,
)
from orchestration.backends.vm_sizes import is_spot, warn_about_priority
from orchestration.launcher import ClusterState, Launcher, LogSource, NodeInfo, PlannedRequest
from orchestration.wheel import NodeFiles, planned_files, ship_node_files
from workpool.errors import NotFoundError, UsageError, WorkpoolError
from workpool.logs import redact
from workpool.settings import Settings

log = logging.getLogger(__name__)

ACTIVE_TASK_STATES = {"active", "preparing", "running"}
NODES_PER_REMOVAL = 100  # the remove-nodes API takes at most 100 node ids per request
# How long to wait for a pool to become steady (stop-resize, remove-nodes) or a job/pool to go.
SETTLE_TIMEOUT_S = 20 * 60.0
# How long scale-in lets terminated consumers finish releasing their batches before their nodes
# are removed (a removal kills what still runs there; its batches would then wait out their lease).
RELEASE_WAIT_S = 60.0
PROGRESS_EVERY_S = 30.0
STDERR_TAIL_CHARS = 1500
MAX_STDERR_READS = 3  # per command: a pool of 32 failed nodes usually fails 32 times the same way
FAILED_NODE_STATES = {"starttaskfailed", "unusable"}


class AzureBatchLauncher(Launcher):
    name = "azure-batch"
    min_launch_nodes = 1  # node counts are checked by the seam (orchestration/launcher.py)

    def __init__(self, settings: Settings, credential: Any = None) -> None:
        self.settings = settings
        self._credential = credential
        self._batch: BatchClient | None = None
        self._pool = settings.pool or ""
        self._job = settings.batch_job
        self._stderr_reads = 0  # start-task stderr files read by this command (a few are enough)
        warn_about_priority(settings)

    # --- the Launcher interface -----------------------------------------------------------
    def _launch(self, nodes: int) -> None:
        check_launch(self.settings)
        made = Made(self.name)
        pool = self._get_pool(made)
        if pool is not None and text_of(pool.state) == "deleting":
            self._wait_until_pool_gone(made)
            pool = None
        if pool is None:
            self._create_pool(nodes, self._ship(made), made)
        elif nodes < max(_target_of(pool), len(self._active_tasks())):
            self._ensure_job(made)
            self._scale_in(nodes, made)
            return
        elif _target_of(pool) != nodes:
            self._grow(nodes, made)
        self._ensure_job(made)
        self._converge_tasks(nodes, made)

    def _scale(self, nodes: int) -> None:
        require_batch(self.settings)
        made = Made(self.name)
        pool = self._get_pool(made)
        if pool is None or text_of(pool.state) == "deleting":
            raise NotFoundError(f"Azure Batch pool {self._pool} does not exist: run `orchestration launch` first")
        if nodes < max(_target_of(pool), len(self._active_tasks())):
            self._scale_in(nodes, made)
            return
        if _target_of(pool) != nodes:
            self._grow(nodes, made)
        else:
            # Same size: renew the links anyway, for nodes Batch adds on its own (Spot replacements).
            self._refresh_start_task(made)
        self._ensure_job(made)
        self._converge_tasks(nodes, made)

    def _grow(self, nodes: int, made: Made) -> None:
        """More nodes: fresh resource-file links on the start task first, then the resize."""
        self._refresh_start_task(made)
        self._resize(nodes, made)

    def state(self) -> ClusterState:
        require_batch(self.settings)
        pool = self._get_pool()
        if pool is None:
            return ClusterState(self.name, 0, [], f"pool {self._pool} does not exist")
        detail = (
            f"pool {self._pool}: {text_of(pool.state)}, allocation {text_of(pool.allocation_state)}, "
            f"{pool.current_dedicated_nodes or 0} dedicated + {pool.current_low_priority_nodes or 0} spot nodes"
        )
        for error in pool.resize_errors or []:
            detail += f"; resize error {error.code}: {error.message}{spot_hint(self.settings, str(error.code))}"
        tasks = self._tasks()
        counts: dict[str, int] = {}
        for task in tasks:
            counts[text_of(task.state)] = counts.get(text_of(task.state), 0) + 1
        if counts:
            detail += f"; job {self._job}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        infos = [NodeInfo(node.id, text_of(node.state), self._node_detail(node)) for node in self._nodes()]
        return ClusterState(self.name, _target_of(pool), infos, detail)

    def failure(self) -> str | None:
        """Why this pool can never run a consumer, or None while it still may.

        Every node failed its start task (or is unusable), or the pool settled at 0 nodes with
        resize errors (no quota, a size the region lacks). `launch --wait` stops on it.
        """
        require_batch(self.settings)
        pool = self._get_pool()
        if pool is None or _target_of(pool) == 0:
            return None
        nodes = self._nodes()
        if nodes and all(text_of(n.state) in FAILED_NODE_STATES for n in nodes):
            first = nodes[0]
            return f"all {len(nodes)} node(s) failed: {first.id}: {self._node_detail(first)}"
        if not nodes and text_of(pool.allocation_state) == "steady" and pool.resize_errors:
            errors = "; ".join(f"{e.code}: {e.message}" for e in pool.resize_errors)
            return f"pool {self._pool} has no nodes: {errors}{spot_hint(self.settings, errors)}"
        return None

    def _teardown(self, delete: bool) -> None:
        require_batch(self.settings)
        s = self.settings
        made = Made(self.name)
        client = self._client()
        job = self._settled_job(made)
        if job is not None and text_of(job.state) in {"active", "disabled", "disabling", "enabling"}:
            with cluster_errors(f"terminating Azure Batch job {self._job}", s, made):
                # Terminating the job ends its running tasks: the consumers release their batches.
                options = cast(Any, {"terminateReason": "workpool teardown"})
                client.begin_terminate_job(self._job, options, polling_interval=_poll_seconds(s)).result()
            made.add(f"terminated job {self._job}")
        pool = self._get_pool(made)
        if delete:
            if job is not None:
                with cluster_errors(f"deleting Azure Batch job {self._job}", s, made):
                    client.begin_delete_job(self._job, polling_interval=_poll_seconds(s))
                made.add(f"deleting job {self._job}")
            if pool is not None and text_of(pool.state) != "deleting":
                self._delete_pool(made)
            return
        if pool is None or text_of(pool.state) == "deleting":
            return
        try:
            self._resize(0, made)
        except WorkpoolError as exc:
            # A pool that cannot be brought to 0 must not keep billing: delete it instead.
            log.warning("could not resize pool %s to 0 (%s): deleting the pool instead", self._pool, exc)
            self._delete_pool(made)

    def _describe(self, nodes: int) -> list[PlannedRequest]:
        check_launch(self.settings)  # the same checks and warnings as a real launch
        s = self.settings
        files = None if bodies.container_image(self.settings) else planned_files(s, with_wheel=s.node_package is None)
        plan = []
        if self.settings.managed_identity_id:
            plan.append(
                PlannedRequest(
                    "PUT",
                    bodies.arm_pool_path(self.settings) + f"?api-version={bodies.ARM_BATCH_API_VERSION}",
                    bodies.arm_pool_body(self.settings, nodes, files, redacted=True).as_dict(),
                    "through Azure Resource Manager: only ARM can give a pool a managed identity",
                )
            )
        else:
            note = "the GPU pool" + (
                f"; nodes run the container image {bodies.container_image(self.settings)}"
                if files is None
                else f"; its start task runs {files.bootstrap.blob_name} (uploaded at launch)"
            )
            plan.append(
                PlannedRequest(
                    "POST",
                    bodies.batch_path("/pools"),
                    bodies.pool_body(self.settings, nodes, files, True).as_dict(),
                    note,
                )
            )
        plan.append(
            PlannedRequest(
                "POST",
                bodies.batch_path("/jobs"),
                bodies.job_body(self.settings, redacted=True).as_dict(),
                "the job; its environment reaches every consumer task",
            )
        )
        ids = [consumer_name(i) for i in range(1, nodes + 1)]
        for start in range(0, len(ids), bodies.TASKS_PER_REQUEST):
            chunk = ids[start : start + bodies.TASKS_PER_REQUEST]
            plan.append(
                PlannedRequest(
                    "POST",
                    bodies.batch_path(f"/jobs/{self._job}/addtaskcollection"),
                    {"value": [bodies.task_body(self.settings, task_id).as_dict() for task_id in chunk]},
                    "one consumer task per node",
                )
            )
        return plan

    # --- pool -----------------------------------------------------------------------------
    def _get_pool(self, made: Made | None = None) -> Any:
        with cluster_errors(f"reading Azure Batch pool {self._pool}", self.settings, made):
            try:
                return self._client().get_pool(self._pool)
            except ResourceNotFoundError:
                return None

    def _ship(self, made: Made) -> NodeFiles | None:
        """Upload the wheel and bootstrap for a start-task pool (None for a container pool)."""
        if bodies.container_image(self.settings):
            return None
        s = self.settings
        files = ship_node_files(s, identity=bool(s.managed_identity_id), with_wheel=s.node_package is None)
        made.add(f"uploaded {files.bootstrap.blob_name.rsplit('/', 1)[0]}/ to container {s.node_files}")
        return files

    def _create_pool(self, nodes: int, files: NodeFiles | None, made: Made) -> None:
        s = self.settings
        kind = "spot" if is_spot(s) else "dedicated"
        what = f"creating Azure Batch pool {self._pool} ({nodes} × {s.vm_size}, {kind})"
        with self._spot_errors():
            if s.managed_identity_id:
                self._create_pool_through_arm(nodes, files, what, made)
            else:
                with cluster_errors(what, s, made):
                    self._client().create_pool(bodies.pool_body(s, nodes, files))
        made.add(f"pool {self._pool} with {nodes} nodes")

    def _refresh_start_task(self, made: Made) -> None:
        """Before nodes are added: the pool's start task with fresh SAS links (and this version's wheel).

        Nodes that join later (a scale-up, Spot replacements) download the resource files when
        they start; links made at the first launch may have expired by then.
        """
        files = self._ship(made)
        if files is None:
            return
        with cluster_errors(f"updating the start task of Azure Batch pool {self._pool}", self.settings, made):
            self._client().update_pool(
                self._pool, bm.BatchPoolUpdateOptions(start_task=bodies.start_task(self.settings, files))
            )

    def _resize(self, nodes: int, made: Made) -> None:
        """Resize to `nodes` once the pool is steady: a resize in progress is stopped first (409 otherwise)."""
        s = self.settings
        dedicated, spot = bodies.split(s, nodes)
        options = bm.BatchPoolResizeOptions(target_dedicated_nodes=dedicated, target_low_priority_nodes=spot)
        if nodes < self._current_target():
            # Nodes still running a task (a requeued consumer that landed there) hand it back at once.
            options.node_deallocation_option = "requeue"
        what = f"resizing Azure Batch pool {self._pool} to {nodes} nodes"
        for attempt in range(3):
            self._settle(made, stop=True)
            with self._spot_errors(), cluster_errors(what, s, made):
                try:
                    # Resizing takes minutes; `status` shows the allocation state meanwhile.
                    self._client().begin_resize_pool(self._pool, options, polling_interval=_poll_seconds(s))
                except HttpResponseError as exc:
                    if exc.status_code == 409 and attempt < 2:
                        # Another resize started between our check and our request: settle again.
                        log.info("%s: %s; settling the pool and trying again", what, service_error(exc))
                        continue
                    raise
            made.add(f"pool {self._pool} resizing to {nodes} nodes")
            return

    def _current_target(self) -> int:
        pool = self._get_pool()
        return 0 if pool is None else _target_of(pool)

    def _settle(self, made: Made, *, stop: bool) -> Any:
        """Wait until the pool's allocation state is steady; with `stop`, stop a resize in progress first."""
        s = self.settings
        pool = self._get_pool(made)
        if pool is None or text_of(pool.allocation_state) == "steady":
            return pool
        if stop and text_of(pool.allocation_state) == "resizing":
            log.info(
                "pool %s is resizing (to %d nodes): stopping that resize before the next one",
                self._pool,
                _target_of(pool),
            )
            with cluster_errors(f"stopping the resize of Azure Batch pool {self._pool}", s, made):
                try:
                    self._client().begin_stop_pool_resize(self._pool, polling_interval=_poll_seconds(s))
                except HttpResponseError as exc:
                    if exc.status_code != 409:  # 409: it became steady meanwhile
                        raise
        self._wait(
            f"pool {self._pool} to finish resizing",
            lambda: (p := self._get_pool(made)) is None or text_of(p.allocation_state) == "steady",
            made,
        )
        return self._get_pool(made)

    def _scale_in(self, nodes: int, made: Made) -> None:
        """Stop the surplus consumers, then remove exactly the nodes they ran on."""
        s = self.settings
        active = self._active_tasks()
        surplus = list(reversed(active[nodes:]))  # newest first: they have done the least work
        freed = []
        for task in surplus:
            with cluster_errors(f"terminating Azure Batch task {task.id}", s, made):
                # The consumer gets SIGTERM and releases the batches it holds.
                self._client().terminate_task(self._job, task.id)
            made.add(f"terminated task {task.id}")
            node_id = getattr(task.node_info, "node_id", None)
            if node_id:
                freed.append(node_id)
        self._await_completed({t.id for t in surplus})
        pool = self._settle(made, stop=True)
        if pool is None:
            return
        kept_tasks = {getattr(t.node_info, "node_id", None) for t in active[:nodes]}
        pool_nodes = [n for n in self._nodes() if text_of(n.state) not in {"leavingpool"}]
        present = {n.id for n in pool_nodes}
        victims = [n for n in freed if n in present]
        excess = len(pool_nodes) - nodes
        if len(victims) < excess:
            # Nodes without a consumer (failed start task first, then idle or still starting).
            spare = [n for n in pool_nodes if n.id not in kept_tasks and n.id not in victims]
            spare.sort(key=lambda n: text_of(n.state) not in FAILED_NODE_STATES)
            victims += [n.id for n in spare[: excess - len(victims)]]
        if not victims:
            if _target_of(pool) != nodes:
                self._resize(nodes, made)
            return
        for start in range(0, len(victims), NODES_PER_REMOVAL):
            chunk = victims[start : start + NODES_PER_REMOVAL]
            if start:
                self._settle(made, stop=False)  # the previous removal must finish, not be stopped
            options = bm.BatchNodeRemoveOptions(node_ids=chunk, node_deallocation_option="requeue")
            with cluster_errors(f"removing nodes {', '.join(chunk)} from Azure Batch pool {self._pool}", s, made):
                self._client().begin_remove_nodes(self._pool, options, polling_interval=_poll_seconds(s))
            made.add(f"removing node(s) {', '.join(chunk)}")

    def _await_completed(self, task_ids: set[str]) -> None:
        """Wait (at most RELEASE_WAIT_S) for terminated consumer tasks to end: they release their batches."""
        poll = max(0.2, self.settings.cluster_poll_interval_s)
        deadline = time.monotonic() + RELEASE_WAIT_S
        while task_ids:
            running = {t.id for t in self._tasks() if t.id in task_ids and text_of(t.state) != "completed"}
            if not running:
                return
            if time.monotonic() > deadline:
                log.warning(
                    "task(s) %s still stopping after %.0f s: removing their nodes anyway (their batches come "
                    "back when their lease runs out)",
                    ", ".join(sorted(running)),
                    RELEASE_WAIT_S,
                )
                return
            time.sleep(poll)

    def _delete_pool(self, made: Made) -> None:
        s = self.settings
        with cluster_errors(f"deleting Azure Batch pool {self._pool}", s, made):
            try:
                # Deleting a pool takes minutes; the poller finishes in the background.
                self._client().begin_delete_pool(self._pool, polling_interval=_poll_seconds(s))
            except ResourceNotFoundError:
                return
        made.add(f"deleting pool {self._pool}")

    def _wait_until_pool_gone(self, made: Made) -> None:
        log.info("pool %s is being deleted: waiting for it to go before making it again", self._pool)
        self._wait(f"pool {self._pool} to be deleted", lambda: self._get_pool(made) is None, made)

    def _create_pool_through_arm(self, nodes: int, files: NodeFiles | None, what: str, made: Made) -> None:
        s = self.settings
        from azure.mgmt.batch import BatchManagementClient

        credential = self._credential if self._credential is not None else default_credential()
        client = BatchManagementClient(
            credential, s.subscription_id or "", base_url=s.arm_endpoint, **arm_client_options(s, credential)
        )
        with cluster_errors(what, s, made):
            pool = client.pool.create(
                s.resource_group or "",
                bodies.account_name(self.settings),
                self._pool,
                bodies.arm_pool_body(s, nodes, files),
            )
        state = str(getattr(pool, "provisioning_state", "") or "")
        if state.lower() == "failed":
            raise WorkpoolError(f"{what} failed: provisioning state Failed; {made.note()}")

    # --- nodes ----------------------------------------------------------------------------
    def _nodes(self) -> list[Any]:
        with cluster_errors(f"listing nodes of Azure Batch pool {self._pool}", self.settings):
            try:
                return list(self._client().list_nodes(self._pool))
            except ResourceNotFoundError:
                return []

    def _node_detail(self, node: Any) -> str:
        parts = ["dedicated" if node.is_dedicated else "spot"]
        for task in node.recent_tasks or []:
            if text_of(task.task_state) == "running":
                parts.append(f"running {task.task_id}")
        for error in node.errors or []:
            parts.append(f"{error.code}: {error.message}")
        start = node.start_task_info
        if start is not None and text_of(start.state) != "completed":
            parts.append(f"start task {text_of(start.state)}")
        elif start is not None and (start.exit_code or text_of(start.result) == "failure"):
            failure = start.failure_info
            reason = f"exit code {start.exit_code}" if start.exit_code is not None else "failed"
            if failure is not None:
                reason += f", {text_of(failure.category)} error {failure.code}: {failure.message}"
            parts.append(f"start task failed ({reason})")
            tail = ""
            if text_of(node.state) in FAILED_NODE_STATES and self._stderr_reads < MAX_STDERR_READS:
                self._stderr_reads += 1
                tail = self._start_task_stderr(node.id)
            if tail:
                parts.append(f"its stderr ends: {tail}")
        return ", ".join(parts)

    def _start_task_stderr(self, node_id: str) -> str:
        """The end of the start task's stderr on the node (startup/stderr.txt), secrets redacted."""
        try:
            data = b"".join(self._client().download_node_file(self._pool, node_id, "startup/stderr.txt"))
        except HttpResponseError as exc:  # ResourceNotFoundError included
            return f"(startup/stderr.txt unreadable: {service_error(exc)})"
        text = data.decode("utf-8", "replace").strip()
        lines = text.splitlines()[-8:]
        tail = " | ".join(line.strip() for line in lines if line.strip())
        return redact(tail[-STDERR_TAIL_CHARS:], self.settings.secret_values())

    # --- job and tasks --------------------------------------------------------------------
    def _get_job(self, made: Made | None = None) -> Any:
        with cluster_errors(f"reading Azure Batch job {self._job}", self.settings, made):
            try:
                return self._client().get_job(self._job)
            except ResourceNotFoundError:
                return None

    def _settled_job(self, made: Made) -> Any:
        """The job once it is not terminating or being deleted (a teardown may still be under way)."""
        job = self._get_job(made)
        if job is None or text_of(job.state) not in {"terminating", "deleting"}:
            return job
        self._wait(
            f"job {self._job} to finish {text_of(job.state)}",
            lambda: (j := self._get_job(made)) is None or text_of(j.state) not in {"terminating", "deleting"},
            made,
        )
        return self._get_job(made)

    def _ensure_job(self, made: Made) -> None:
        s = self.settings
        what = f"creating Azure Batch job {self._job} on pool {self._pool}"
        job = self._settled_job(made)
        if job is not None and text_of(job.state) == "active":
            return
        if job is not None:
            # A job ended by `teardown` cannot take new tasks: delete it and start afresh.
            log.info("job %s is %s: deleting it before a new launch", self._job, text_of(job.state))
            with cluster_errors(f"deleting finished Azure Batch job {self._job}", s, made):
                self._client().begin_delete_job(self._job, polling_interval=_poll_seconds(s)).result()
        with cluster_errors(what, s, made):
            try:
                self._client().create_job(bodies.job_body(s))
            except ResourceExistsError:
                return  # created meanwhile by another launch: use it
        made.add(f"job {self._job}")

    def _tasks(self) -> list[Any]:
        with cluster_errors(f"listing tasks of Azure Batch job {self._job}", self.settings):
            try:
                tasks = list(self._client().list_tasks(self._job))
            except ResourceNotFoundError:
                return []
        numbered = [(n, t) for t in tasks if (n := consumer_index(t.id)) is not None]
        return [t for _, t in sorted(numbered, key=lambda pair: pair[0])]

    def log_sources(self) -> list[LogSource]:
        """Every consumer task's stdout.txt and stderr.txt, read through the Batch API (`orchestration logs`)."""
        sources = []
        for task in self._tasks():
            info = task.node_info
            node = info.node_id if info is not None and info.node_id else task.id
            for stream in ("stdout", "stderr"):
                sources.append(task_file_source(self._client, self.settings, self._job, task.id, node, stream))
        return sources

    def _active_tasks(self) -> list[Any]:
        return [t for t in self._tasks() if text_of(t.state) in ACTIVE_TASK_STATES]

    def _converge_tasks(self, nodes: int, made: Made) -> None:
        """Add consumer tasks so that `nodes` of them are active or running (scale-in is `_scale_in`)."""
        s = self.settings
        tasks = self._tasks()
        active = [t for t in tasks if text_of(t.state) in ACTIVE_TASK_STATES]
        for task in reversed(active[nodes:]):  # a launch with fewer nodes than tasks: newest first
            with cluster_errors(f"terminating Azure Batch task {task.id}", s, made):
                self._client().terminate_task(self._job, task.id)
            made.add(f"terminated task {task.id}")
        missing = max(0, nodes - len(active))
        if not missing:
            return
        first = max((consumer_index(t.id) or 0 for t in tasks), default=0) + 1
        ids = [consumer_name(i) for i in range(first, first + missing)]
        what = f"adding {len(ids)} consumer tasks to Azure Batch job {self._job}"
        with cluster_errors(what, s, made):
            try:
                # The SDK sends at most 100 per request, retries server errors, and counts a
                # task that already exists (a retried request that had landed) as added.
                self._client().create_tasks(self._job, [bodies.task_body(s, i) for i in ids])
            except bm.CreateTasksError as exc:
                raise WorkpoolError(redact(refused_tasks(what, exc, len(ids), made), s.secret_values())) from None
        made.add(f"{len(ids)} consumer tasks ({ids[0]}…)")

    # --- plumbing -------------------------------------------------------------------------
    @contextmanager
    def _spot_errors(self) -> Iterator[None]:
        """A refused Spot pool or resize says which account mode Spot needs."""
        try:
            yield
        except WorkpoolError as exc:
            if isinstance(exc, UsageError) or not is_spot(self.settings) or "Spot nodes need" in str(exc):
                raise
            raise type(exc)(f"{exc}{spot_hint(self.settings, str(exc))}") from None

    def _wait(self, what: str, done: Callable[[], bool], made: Made) -> None:
        """Poll `done` until true, logging progress, for at most SETTLE_TIMEOUT_S."""
        poll = max(0.2, self.settings.cluster_poll_interval_s)
        started = last_said = time.monotonic()
        while not done():
            now = time.monotonic()
            if now - started > SETTLE_TIMEOUT_S:
                raise WorkpoolError(
                    f"waited {SETTLE_TIMEOUT_S / 60:.0f} min for {what}; try again later; {made.note()}"
                )
            if now - last_said >= PROGRESS_EVERY_S:
                log.info("still waiting for %s (%.0f s)", what, now - started)
                last_said = now
            time.sleep(poll)

    def _client(self) -> BatchClient:
        if self._batch is None:
            self._batch = batch_client(self.settings, self._credential)
        return self._batch


def _poll_seconds(settings: Settings) -> int:
    """The SDK pollers' interval (whole seconds, at least 1: they poll in a background thread)."""
    return max(1, math.ceil(settings.cluster_poll_interval_s))


def _target_of(pool: Any) -> int:
    return int(pool.target_dedicated_nodes or 0) + int(pool.target_low_priority_nodes or 0)
