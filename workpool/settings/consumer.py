"""What a consumer does with a batch: leases, attempts, decode, scoring, and what a message may make it read."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, Field, field_validator

from workpool.messages import MAX_BATCH_IMAGES
from workpool.settings.checks import is_link_local, is_loopback, split_list
from workpool.settings.tags import (
    CONSUMERS,
    CONTAINER_NAME,
    HANDOFF_KEY,
    LOCAL,
    MODULE_NAME,
    NODE_DEFAULT_KEY,
    SCHEDULED_EVENTS_URL,
)


class ConsumerSettings(BaseModel):
    """What a consumer does with a batch: leases, attempts, decode, scoring, and what a message may make it read."""

    # --- work ---------------------------------------------------------------------------
    batch_size: int = Field(
        64,
        gt=0,
        le=MAX_BATCH_IMAGES,
        description="Images per batch message (a consumer warms its `model` at this batch size).",
        json_schema_extra=CONSUMERS,
    )
    message_ttl_s: int = Field(
        7 * 24 * 3600,
        description="Message time-to-live in seconds (default 7 days; `producer requeue --missing` re-sends "
        "expired batches); -1 never expires.",
        json_schema_extra=CONSUMERS,
    )
    visibility_timeout_s: int = Field(
        120,
        ge=1,
        le=7 * 24 * 3600,
        description="Lease on a received batch; renewed in the background.",
        json_schema_extra=CONSUMERS,
    )
    max_attempts: int = Field(
        5, ge=1, description="Deliveries before a batch is dead-lettered.", json_schema_extra=CONSUMERS
    )
    idle_exit_s: float | None = Field(
        None,
        gt=0,
        description="Consumer exits after the queue has been empty this long.",
        json_schema_extra=CONSUMERS,
    )
    prefetch_batches: int = Field(
        1,
        ge=0,
        description="Batches received and decoded ahead of the one being scored.",
        json_schema_extra=CONSUMERS,
    )
    stop_finish_s: float = Field(
        0.0,
        ge=0,
        description="A consumer told to stop (SIGTERM, scale-in) first finishes and acks the batch it is scoring, "
        "for up to this many seconds (prefetched batches are released at once); 0: release it at once too. "
        "`launch --autoscale` sets it for its nodes, so a scale-in never abandons a batch mid-score.",
        json_schema_extra=CONSUMERS,
    )
    decode_threads: int = Field(
        0, ge=0, description="Image decode threads; 0 sizes the pool to the machine.", json_schema_extra=CONSUMERS
    )
    precision: Literal["float32", "mixed"] = Field(
        "float32",
        description="float32, or Keras mixed precision (float16 compute) for GPUs.",
        json_schema_extra=CONSUMERS,
    )
    xla: bool = Field(False, description="Compile the model call with XLA.", json_schema_extra=CONSUMERS)
    allow_unsafe_models: bool = Field(
        False,
        description="Allow models whose loading runs arbitrary code: Lambda layers in .keras/.h5 files, and "
        "TensorFlow SavedModel folders (a graph can read and write files, use the network, start processes).",
        json_schema_extra=CONSUMERS,
    )
    # --- what a message may make a consumer read and run (docs/security.md) ---------------
    task_modules: str = Field(
        "",
        description="Modules (comma-separated; their submodules too) whose ScoringTask classes a message may name "
        "as package.module:ClassName, beyond the built-in tasks (consumer.tasks); empty: built-in tasks only.",
        json_schema_extra=CONSUMERS,
    )
    read_containers: str = Field(
        "",
        description="Blob containers (comma-separated) a message may name for images, models and labels, beyond "
        "the run's own source container and the container of `model`.",
        json_schema_extra=CONSUMERS,
    )
    local_roots: str | None = Field(
        None,
        description="Local folders (comma-separated) a message may name for images, models and labels; unset: any "
        "folder of this machine; `none`: no local paths (the default on cluster nodes).",
        json_schema_extra={HANDOFF_KEY: True, NODE_DEFAULT_KEY: "none"},
    )
    max_image_bytes: int = Field(
        64 * 1024**2, gt=0, description="Largest image file a consumer reads (bytes).", json_schema_extra=CONSUMERS
    )
    max_model_bytes: int = Field(
        4 * 1024**3,
        gt=0,
        description="Largest model a consumer reads (bytes; a SavedModel folder's files together).",
        json_schema_extra=CONSUMERS,
    )
    max_labels_bytes: int = Field(
        16 * 1024**2,
        gt=0,
        description="Largest labels or head-spec file a consumer reads (bytes).",
        json_schema_extra=CONSUMERS,
    )
    model_cache: Path | None = Field(
        None, description="Where downloaded models are cached (default <home>/models).", json_schema_extra=LOCAL
    )
    allow_cpu: bool = Field(
        False,
        description="Score on the CPU even when the machine has GPUs the framework cannot see.",
        json_schema_extra=CONSUMERS,
    )
    model: str | None = Field(
        None,
        description="Model URI a consumer loads and warms before its first batch (runs pending on its queue "
        "are warmed too); batches still name their own model.",
        json_schema_extra=CONSUMERS,
    )
    scheduled_events_url: str | None = Field(
        None,
        description="Azure Scheduled Events endpoint a consumer watches for its VM's preemption (releasing its "
        "batches at once); cluster nodes watch the instance metadata service's, this machine none unless set.",
        json_schema_extra={HANDOFF_KEY: True, NODE_DEFAULT_KEY: SCHEDULED_EVENTS_URL},
    )

    @field_validator("scheduled_events_url")
    @classmethod
    def _metadata_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parsed = urlparse(value)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        if parsed.scheme == "http" and not (is_loopback(parsed.hostname) or is_link_local(parsed.hostname)):
            raise ValueError(
                "plain http is accepted only for the metadata service (169.254.169.254) and loopback hosts"
            )
        return value

    @field_validator("message_ttl_s")
    @classmethod
    def _ttl(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError("expected -1 (never expire) or a positive number of seconds")
        return value

    @field_validator("task_modules")
    @classmethod
    def _task_modules(cls, value: str) -> str:
        for module in split_list(value):
            if not MODULE_NAME.match(module) or "__main__" in module.split("."):
                raise ValueError(f"{module!r} is not an importable module name (package.module, no __main__)")
        return value

    @field_validator("read_containers")
    @classmethod
    def _read_containers(cls, value: str) -> str:
        for container in split_list(value):
            if not CONTAINER_NAME.match(container):
                raise ValueError(f"{container!r} is not an Azure container name (3-63 lowercase letters, digits, '-')")
        return value

    @field_validator("local_roots")
    @classmethod
    def _local_roots(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() != "none":
            for root in split_list(value):
                if not Path(root).is_absolute():
                    raise ValueError(f"{root!r} is not an absolute folder path (or `none`)")
        return value

    @property
    def allowed_task_modules(self) -> tuple[str, ...]:
        """Modules custom tasks may come from: the built-in tasks' package, then `task_modules`."""
        return ("consumer.tasks", *split_list(self.task_modules))

    @property
    def allowed_local_roots(self) -> tuple[Path, ...] | None:
        """Folders local paths must be under; None: any; empty: no local paths at all."""
        if self.local_roots is None:
            return None
        if self.local_roots.strip().lower() == "none":
            return ()
        return tuple(Path(root) for root in split_list(self.local_roots))
