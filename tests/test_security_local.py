"""Local boundaries: WORKPOOL_HOME is the user's own and closed to others; decoding stays in bounds.

Other users are real here: the tests run as root, so a folder is really handed to uid 65534
(`nobody`) with chown, and reads are really attempted as that user in a child process. The
Ghostscript attack is real too: an EPS file among a run's images, and a `gs` on the consumer's
PATH that leaves a marker if Pillow ever hands it the file.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from consumer.images import decode_with_pillow
from tests.support.cli import run_cli
from tests.support.faults_pool import check_every_image_once, enqueue_run, run_store, unique_images
from workpool.errors import ImageError
from workpool.settings import load_settings

pytestmark = [pytest.mark.embedded]

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user (chown, setuid)")
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder other users can pass through (pytest's own tmp_path is closed to them)."""
    with tempfile.TemporaryDirectory(prefix="workpool-sec-") as folder:
        os.chmod(folder, 0o711)
        yield Path(folder)


def read_as_nobody(paths: list[Path]) -> dict[str, str]:
    """What uid 65534 gets when it tries to read each path: 'read' or the error's name."""
    code = (
        "import os, sys\nos.setgid(65534); os.setuid(65534)\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        (os.listdir(p) if os.path.isdir(p) else open(p, 'rb').read(1)); print(p, 'read')\n"
        "    except OSError as e:\n"
        "        print(p, type(e).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, check=True)
    return dict(line.rsplit(" ", 1) for line in out.stdout.splitlines())


@needs_root
def test_a_new_home_is_0700_and_no_other_user_reads_what_is_in_it(shared_tmp: Path, tmp_path: Path) -> None:
    # Given a home that does not exist yet, in a folder every user can pass through
    home = shared_tmp / "home"
    settings = load_settings(home=home, queue="perm")
    names = unique_images(tmp_path / "images", 2)

    # When a run is enqueued and scored there with the real tools
    enqueue_run(settings, str(tmp_path / "images"), "r1", "--task", "consumer.tasks.examples:SleepTask")
    out = run_cli("consumer", settings, "run", "--idle-exit-s", "1", env={"WORKPOOL_EXAMPLE_SLEEP_S": "0"})
    assert out.code == 0, out.stderr
    assert check_every_image_once(settings, "r1", names, tmp_path / "r1.jsonl").ok == 2

    # Then the home is 0700, and another user can read neither it nor anything in it
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    inside = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "queue.sqlite3" for p in inside) and any("results" in p.parts for p in inside)
    attempts = read_as_nobody([home, *inside])
    assert set(attempts.values()) == {"PermissionError"}, attempts
    # (while a file beside it, open to all, is read: the refusals are the home's doing)
    (shared_tmp / "open.txt").write_text("x")
    os.chmod(shared_tmp / "open.txt", 0o644)
    assert read_as_nobody([shared_tmp / "open.txt"]) == {str(shared_tmp / "open.txt"): "read"}


@needs_root
def test_a_home_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    # Given a home folder that belongs to another user
    home = tmp_path / "theirs"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    settings = load_settings(home=home, queue="theirs")
    unique_images(tmp_path / "images", 1)

    # When the producer and the consumer are pointed at it
    enqueued = run_cli("producer", settings, "enqueue", str(tmp_path / "images"), "--run", "r1")
    consumed = run_cli("consumer", settings, "run", "--idle-exit-s", "1")

    # Then both refuse with a usage error naming the setting and the owner, and write nothing there
    for out in (enqueued, consumed):
        assert out.code == 2, out.stdout + out.stderr
        assert f"WORKPOOL_HOME (home): {home} is owned by uid {NOBODY}" in out.stderr
        assert "Traceback" not in out.stderr
    assert list(home.iterdir()) == []


def test_a_home_open_to_others_is_closed_when_used(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    unique_images(tmp_path / "images", 1)
    settings = load_settings(home=home, queue="open")
    enqueue_run(settings, str(tmp_path / "images"), "r1", "--task", "consumer.tasks.examples:SleepTask")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_an_eps_image_never_reaches_ghostscript(tmp_path: Path) -> None:
    # Given a run whose images include an EPS file named like a JPEG, and a `gs` that leaves a
    # marker if it is ever run (Pillow hands EPS files to Ghostscript when it decodes them)
    names = unique_images(tmp_path / "images", 3)
    (tmp_path / "images" / "z_doc.jpg").write_bytes(EPS)
    names.append("z_doc.jpg")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "gs-ran.txt"
    (bin_dir / "gs").write_text(f'#!/bin/sh\necho "$@" > {marker}\nexit 1\n')
    (bin_dir / "gs").chmod(0o755)
    settings = load_settings(home=tmp_path / "home", queue="eps")
    enqueue_run(settings, str(tmp_path / "images"), "r1", "--task", "consumer.tasks.examples:SleepTask")

    # When a consumer with that `gs` first on its PATH scores the run
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "WORKPOOL_EXAMPLE_SLEEP_S": "0"}
    out = run_cli("consumer", settings, "run", "--idle-exit-s", "1", env=env)

    # Then the EPS file is an error row, Ghostscript never ran, and the other images are scored
    assert out.code == 0, out.stderr
    assert not marker.exists()
    rows = check_every_image_once(settings, "r1", names, tmp_path / "r1.jsonl")
    assert rows.ok == 3 and rows.errors == 1
    [row] = [r for r in run_store(settings).read_results("r1", "b000000") if r.image == "z_doc.jpg"]
    assert row.error == "not an image (unrecognised format)"
    # (the same bytes are refused in process too, without Pillow's EPS parser)
    with pytest.raises(ImageError, match="not an image"):
        decode_with_pillow(EPS, (32, 32))


def test_a_16_bit_decode_stays_within_a_few_bytes_a_pixel() -> None:
    # Given a 16-bit grayscale PNG of 4 Mpx (scaled to 8 bits when decoded)
    wide = np.random.default_rng(0).integers(0, 65535, size=(2000, 2000), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    data = buffer.getvalue()

    # When it is decoded at its own size
    tracemalloc.start()
    try:
        pixels = decode_with_pillow(data, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Then the decode's own arrays peaked under 8 bytes a pixel (measured: 6; the 64-bit copies
    # made before, one whole-image array after another, peaked at 24), and the scaling is exact
    assert pixels.shape == (2000, 2000, 3)
    assert peak < 8 * wide.size, f"{peak / wide.size:.1f} bytes a pixel"
    expected = np.round(wide.astype(np.float64) * (255.0 / 65535)).astype(np.uint8)
    np.testing.assert_array_equal(pixels[..., 0], expected)
