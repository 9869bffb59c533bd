"""Notebook and terminal manners of the API: dict-like results with HTML, and wait progress."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any

from orchestration.reports.html import fields_html
from orchestration.reports.progress import RunProgress


class Info(Mapping[str, Any]):
    """A read-only JSON document (the content of a command's `--json`) that a notebook shows as a table."""

    def __init__(self, title: str, data: Mapping[str, Any]) -> None:
        self.title = title
        self._data = dict(data)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._data, default=str))  # type: ignore[no-any-return]

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.title!r}, {self._data!r})"

    def _repr_html_(self) -> str:
        return fields_html(self.title, self._data)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell), where progress is drawn as HTML."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ipython = getattr(shell, "get_ipython", lambda: None)()
    return ipython is not None and type(ipython).__name__ == "ZMQInteractiveShell"


def _line(p: RunProgress) -> str:
    eta = "" if p.eta_s is None or p.complete else f" · ETA {p.eta_s:.0f} s"
    return (
        f"run {p.run_id}: {p.batches_finished}/{p.batches} batches ({p.batches_poisoned} poisoned) · "
        f"{p.images_ok + p.images_failed}/{p.images} images · {p.images_per_s:.1f} images/s{eta}"
    )


class WaitProgress:
    """Progress of `Run.wait()`: an HTML bar updated in place in a notebook, a rich bar on a
    terminal's stderr, nothing otherwise (a log file, a pipe). Closed whatever happens."""

    def __init__(self, run_id: str, enabled: bool = True) -> None:
        self.run_id = run_id
        self._handle: Any = None
        self._html: Any = None
        self._bar: Any = None
        self._task: Any = None
        if not enabled:
            return
        if in_notebook():
            shown: Any = importlib.import_module("IPython.display")  # untyped: only in a kernel
            self._html = shown.HTML
            self._handle = shown.display(self._html(f"<code>run {run_id}: waiting…</code>"), display_id=True)
        elif sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                console=Console(stderr=True), transient=True,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task(f"run {run_id}", total=None, note="batches")

    def update(self, progress: RunProgress) -> None:
        if self._handle is not None:
            share = progress.batches_finished / progress.batches if progress.batches else 1.0
            self._handle.update(
                self._html(
                    f"<progress value='{share:.3f}' max='1' style='width:40%'></progress> "
                    f"<code>{_line(progress)}</code>"
                )
            )
        elif self._bar is not None:
            note = f"batches · {progress.images_per_s:.1f} images/s"
            self._bar.update(self._task, total=progress.batches, completed=progress.batches_finished, note=note)

    def __enter__(self) -> WaitProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._handle is not None and kind is KeyboardInterrupt:
            self._handle.update(self._html(f"<code>run {self.run_id}: stopped waiting (the run goes on)</code>"))
