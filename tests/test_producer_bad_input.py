"""Bad input to `producer enqueue`: one clear line, exit code 2, nothing enqueued, no manifest.

Every case runs the real CLI (in this process: Typer's CliRunner) on both backends, and then
looks at the queue and the result store to prove that nothing was left behind.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from producer.cli import app
from tests.conftest import backend_env
from tests.support.cli import Outcome
from tests.support.producer_cli import drain_messages, queue_depth, recorded_runs
from workpool.runs import RunStore
from workpool.settings import Settings
from workpool.storage import open_result_store


def producer(settings: Settings, *args: str) -> Outcome:
    """`producer ARGS` in this process on the settings' backend; the logging it configured is undone."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(app, list(args), env=backend_env(settings))
    finally:
        root.handlers[:], root.level = handlers, level
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr)


# Each case: (arguments given a tmp folder holding `images/` with 3 images, expected words in stderr)
Case = Callable[[Path], tuple[list[str], str]]


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def at(path: Path) -> str:
    """The SOURCE form of a list file."""
    return f"@{path}"


CASES: dict[str, Case] = {
    "empty directory": lambda t: ([str(t / "empty")], "no images in"),
    "only non-images": lambda t: (
        [str(_write(t / "docs" / "a.txt", b"x").parent)],
        "no images in",
    ),
    "missing directory": lambda t: ([str(t / "nowhere")], "does not exist"),
    "a file given as a directory": lambda t: ([str(_write(t / "one.jpg", b"x"))], "use @"),
    "missing list file": lambda t: ([at(t / "absent.txt")], "does not exist"),
    "list file that is a directory": lambda t: ([at(t / "images")], "is a directory"),
    "list file that is not text": lambda t: ([at(_write(t / "bin.txt", b"a.jpg\n\xff\xfe.jpg\n"))], "not UTF-8"),
    "empty list file": lambda t: ([at(_write(t / "none.txt", b"# nothing yet\n"))], "no images in"),
    "a name escaping the source": lambda t: ([at(_write(t / "up.txt", b"ok.jpg\n../secret.jpg\n"))], "line 2"),
    "a name too long for any message": lambda t: (
        [at(_write(t / "huge.txt", ("x" * 70_000 + ".jpg").encode()))],
        "cannot fit in any message",
    ),
    "batch size zero": lambda t: ([str(t / "images"), "--batch-size", "0"], "--batch-size"),
    "batch size negative": lambda t: ([str(t / "images"), "--batch-size", "-5"], "--batch-size"),
    "batch size too large": lambda t: ([str(t / "images"), "--batch-size", "2000"], "--batch-size must be between"),
    "unknown task": lambda t: ([str(t / "images"), "--task", "detection"], "unknown task 'detection'"),
    "malformed custom task": lambda t: ([str(t / "images"), "--task", "pkg.mod:"], "pkg.module:Class"),
    "invalid run id": lambda t: ([str(t / "images"), "--run", "my run!"], "run id"),
    "missing model file": lambda t: ([str(t / "images"), "--model", str(t / "nope.keras")], "does not exist"),
    "model URL of another scheme": lambda t: ([str(t / "images"), "--model", "https://x/m.keras"], "--model"),
    "limit zero": lambda t: ([str(t / "images"), "--limit", "0"], "--limit"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_exits_2_and_leaves_nothing_behind(settings: Settings, tmp_path: Path, case: str) -> None:
    # Given a folder with a few images (the valid part of most cases) and an empty folder
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _write(tmp_path / "images" / name, b"x")
    (tmp_path / "empty").mkdir()
    args, expected = CASES[case](tmp_path)

    # When the user enqueues it
    out = producer(settings, "enqueue", *args, "--json")

    # Then: one clear error line, exit code 2, nothing on stdout, nothing enqueued, no manifest
    assert out.code == 2, (out.code, out.stdout, out.stderr)
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""
    assert queue_depth(settings) == 0
    assert recorded_runs(settings) == []


def test_a_missing_container_is_bad_input(settings: Settings) -> None:
    # On Azurite the container does not exist; on the embedded backend az:// needs Azure at all.
    out = producer(settings, "enqueue", f"az://nothere{uuid.uuid4().hex[:8]}/images", "--json")
    assert out.code == 2, out.stderr
    assert "does not exist" in out.stderr or "needs Azure Storage" in out.stderr
    assert queue_depth(settings) == 0
    assert recorded_runs(settings) == []


def test_an_existing_run_is_refused_and_points_to_requeue(settings: Settings, tmp_path: Path) -> None:
    # Given a run already enqueued
    for name in ("a.jpg", "b.jpg"):
        _write(tmp_path / "images" / name, b"x")
    first = producer(settings, "enqueue", str(tmp_path / "images"), "--run", "once", "--batch-size", "1")
    assert first.code == 0, first.stderr
    manifest_before = RunStore(open_result_store(settings)).read_manifest("once")

    # When the same run id is enqueued again, even from another source
    _write(tmp_path / "other" / "z.jpg", b"x")
    again = producer(settings, "enqueue", str(tmp_path / "other"), "--run", "once")

    # Then it is refused with a pointer to requeue, and the first run is untouched
    assert again.code == 2
    assert "already exists" in again.stderr and "producer requeue --run once" in again.stderr
    assert RunStore(open_result_store(settings)).read_manifest("once") == manifest_before
    assert sorted(m.images[0] for m in drain_messages(settings)) == ["a.jpg", "b.jpg"]


def test_secrets_never_appear_in_errors(settings: Settings, tmp_path: Path) -> None:
    out = producer(settings, "enqueue", str(tmp_path / "nowhere"), "--log-level", "DEBUG")
    assert out.code == 2
    if settings.connection_string is not None:
        key = settings.connection_string.get_secret_value().split("AccountKey=")[1].split(";")[0]
        assert key not in out.stderr and key not in out.stdout
