"""What happens on one emulated compute node: its folders, its environment, its processes.

A node is a folder laid out like `/mnt/batch/tasks` on a Linux Batch node:

    <root>/startup/            AZ_BATCH_NODE_STARTUP_DIR (the start task's task dir)
    <root>/startup/wd/         the start task's working dir; its resource files land here
    <root>/startup/stdout.txt, stderr.txt
    <root>/shared/             AZ_BATCH_NODE_SHARED_DIR
    <root>/workitems/<job>/job-1/<task>/        AZ_BATCH_TASK_DIR of a task (stdout.txt, stderr.txt)
    <root>/workitems/<job>/job-1/<task>/wd/     AZ_BATCH_TASK_WORKING_DIR

Command lines are run the way the Batch node agent runs them on Linux: split into arguments and
executed directly, **not under a shell** (the Batch docs: "the command lines executed by tasks
on compute nodes don't run under a shell"; use `/bin/sh -c "..."` for shell features). Every
process gets its own session (process group), so terminating or preempting a node reaches the
whole tree it started.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Failure:
    """Why a task could not start or failed: Batch's TaskFailureInformation."""

    category: str  # "usererror" | "servererror"
    code: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "code": self.code,
            "message": self.message,
            "details": [{"name": "Message", "value": self.message}],
        }


class NodeHost:
    """The folders and processes of one node."""

    def __init__(self, root: Path, node_id: str) -> None:
        self.root = root
        self.node_id = node_id
        for sub in ("startup/wd", "shared", "workitems", "fsmounts", "home"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def startup_dir(self) -> Path:
        return self.root / "startup"

    def task_dir(self, job_id: str, task_id: str) -> Path:
        return self.root / "workitems" / job_id / "job-1" / task_id

    def file(self, relative: str) -> Path | None:
        """A file of the node by its Batch path ("startup/stderr.txt"); None outside the node."""
        path = (self.root / relative).resolve()
        return path if path.is_relative_to(self.root.resolve()) else None

    # --- resource files ---------------------------------------------------------------------
    def download(self, resource_files: list[dict[str, Any]], working_dir: Path) -> Failure | None:
        """Fetch a task's resource files into its working dir, as the node agent does first."""
        for spec in resource_files:
            try:
                if spec.get("httpUrl"):
                    target = working_dir / spec.get("filePath", "")
                    if not spec.get("filePath"):
                        return Failure("usererror", "InvalidResourceFile", "httpUrl needs a filePath")
                    _fetch(spec["httpUrl"], target)
                    _chmod(target, spec.get("fileMode"))
                elif spec.get("storageContainerUrl"):
                    base = working_dir / spec.get("filePath", "")
                    for name in _list_container(spec["storageContainerUrl"], spec.get("blobPrefix", "")):
                        target = base / name
                        _fetch(_blob_url(spec["storageContainerUrl"], name), target)
                        _chmod(target, spec.get("fileMode"))
                else:
                    return Failure(
                        "usererror",
                        "UnsupportedResourceFile",
                        "the emulator fetches httpUrl and storageContainerUrl resource files only",
                    )
            except urllib.error.HTTPError as exc:
                code = {404: "BlobNotFound", 403: "BlobAccessDenied"}.get(exc.code, "BlobDownloadMiscError")
                where = spec.get("httpUrl") or spec.get("storageContainerUrl") or ""
                return Failure("usererror", code, f"{exc.code} {exc.reason} downloading {_without_query(where)}")
            except (urllib.error.URLError, OSError) as exc:
                return Failure("servererror", "BlobDownloadMiscError", f"downloading a resource file: {exc}")
        return None

    # --- processes --------------------------------------------------------------------------
    def spawn(self, command_line: str, task_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start a command line in `task_dir/wd`, output to task_dir/stdout.txt and stderr.txt."""
        working_dir = task_dir / "wd"
        working_dir.mkdir(parents=True, exist_ok=True)
        argv = shlex.split(command_line)
        # Each try starts with fresh output files, as on a node.
        with open(task_dir / "stdout.txt", "wb") as out, open(task_dir / "stderr.txt", "wb") as err:
            return subprocess.Popen(
                argv,
                cwd=working_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send `sig` to the process group a node process leads (its whole tree)."""
    if proc.poll() is not None and sig != signal.SIGKILL:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def group_alive(group: int) -> bool:
    """Whether any live (non-zombie) process is still in process group `group` (Linux /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def _fetch(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)


def _chmod(path: Path, mode: str | None) -> None:
    path.chmod(int(mode, 8) if mode else 0o770)


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def _blob_url(container_url: str, name: str) -> str:
    base, _, query = container_url.partition("?")
    url = f"{base.rstrip('/')}/{urllib.parse.quote(name)}"
    return f"{url}?{query}" if query else url


def _list_container(container_url: str, prefix: str) -> list[str]:
    base, _, query = container_url.partition("?")
    params = "restype=container&comp=list" + (f"&prefix={urllib.parse.quote(prefix)}" if prefix else "")
    names: list[str] = []
    marker = ""
    while True:
        url = f"{base}?{params}" + (f"&marker={urllib.parse.quote(marker)}" if marker else "")
        url += f"&{query}" if query else ""
        with urllib.request.urlopen(url, timeout=60) as response:
            tree = ET.fromstring(response.read())
        names += [el.text or "" for el in tree.iter("Name")]
        marker = tree.findtext("NextMarker") or ""
        if not marker:
            return names
