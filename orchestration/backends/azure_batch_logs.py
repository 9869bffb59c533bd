"""A consumer task's output files on Azure Batch, for `orchestration logs`: sized and read through the Batch API."""

from __future__ import annotations

from collections.abc import Callable

from azure.batch import BatchClient
from azure.core.exceptions import HttpResponseError

from orchestration.backends.cluster_common import cluster_errors
from orchestration.launcher import LogSource
from workpool.settings import Settings


def task_file_source(
    client: Callable[[], BatchClient], settings: Settings, job: str, task_id: str, node: str, stream: str
) -> LogSource:
    """The task's `<stream>.txt` (stdout or stderr), read from an offset (a byte range) on demand."""
    path = f"{stream}.txt"

    def size() -> int | None:
        with cluster_errors(f"reading {path} of Azure Batch task {task_id}", settings):
            try:
                return int(client().get_task_file_properties(job, task_id, path).content_length)
            except HttpResponseError as exc:  # not started yet (TaskFilesUnavailable), or gone
                if exc.status_code in (404, 409):
                    return None
                raise

    def read(offset: int) -> bytes:
        with cluster_errors(f"reading {path} of Azure Batch task {task_id}", settings):
            try:
                return b"".join(client().download_task_file(job, task_id, path, ocp_range=f"bytes={offset}-"))
            except HttpResponseError as exc:
                if exc.status_code in (404, 409, 416):
                    return b""
                raise

    return LogSource(node, stream, size, read, aliases=(task_id,))
