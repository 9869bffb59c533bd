"""An AML consumer job's own log (user_logs/std_log.txt), for `orchestration logs` and `status`.

The run history gives each job's log files as short-lived URLs; the log is read whole from its
URL (AML logs are one blob a job, appended while it runs) and sliced at the reader's offset.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable
from typing import Any

from orchestration.launcher import LogSource

log = logging.getLogger(__name__)

STD_LOG = "std_log.txt"


def job_log(client: Callable[[], Any], name: str) -> tuple[bytes | None, str | None]:
    """(the job's std_log.txt, or None while it has none; the service's error message, if any)."""
    try:
        details = client().jobs._runs_operations.get_run_details(name)
    except Exception as exc:  # a log that cannot be read must not hide the status
        log.debug("reading the log of job %s: %s", name, exc)
        return None, None
    error = getattr(details, "error", None)
    message = getattr(getattr(error, "error", None), "message", None)
    urls = getattr(details, "log_files", None) or {}
    url = next((u for k, u in urls.items() if k.endswith(STD_LOG)), None)
    if not url:
        return None, message
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - a URL the service gave
            return answer.read(), message
    except OSError as exc:
        log.debug("downloading the log of job %s: %s", name, exc)
        return None, message


def job_log_source(client: Callable[[], Any], name: str) -> LogSource:
    """One consumer job's log as a `LogSource` (stdout and stderr together, as AML writes them)."""

    def size() -> int | None:
        text, _ = job_log(client, name)
        return None if text is None else len(text)

    def read(offset: int) -> bytes:
        text, _ = job_log(client, name)
        return b"" if text is None else text[offset:]

    return LogSource(name, "log", size, read)
