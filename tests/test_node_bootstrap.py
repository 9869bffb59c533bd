"""What an Azure Batch node runs before its consumer, executed for real: the bootstrap script
(orchestration/node/bootstrap.sh) in a node-like folder with Batch's variables, installing the
wheel `launch` builds, and the accelerator check of the bootstrap and of `consumer run`.

Like the Batch emulator's nodes, these runs have no package index: the project's dependencies
come from this environment's site-packages on PYTHONPATH, and pip installs only the wheel.
A stub `nvidia-smi` on PATH plays a GPU machine whose TensorFlow cannot see the GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from orchestration.backends.azure_batch_bodies import bootstrap_command
from orchestration.node import BOOTSTRAP, BOOTSTRAP_FILE
from orchestration.wheel import (
    CONSTRAINTS_FILE,
    NodeFiles,
    ShippedFile,
    build_wheel,
    file_sha256,
    launch_constraints,
    project,
    source_digest,
)
from workpool.errors import SettingsError

SITE_PACKAGES = sysconfig.get_paths()["purelib"]
STUB_GPU = "GPU 0: NVIDIA A100 80GB PCIe (UUID: GPU-00000000-1111-2222-3333-444444444444)"


@pytest.fixture(scope="module")
def wheel(node_wheel_cache: Path) -> Path:
    proj = project()  # the session's wheel (tests/conftest.py): found in its cache, not built again
    return build_wheel(proj, source_digest(proj), cache=node_wheel_cache / "workpool" / "wheels")


def node(tmp_path: Path, wheel: Path | None, gpu: bool = False) -> tuple[Path, dict[str, str]]:
    """A node's folders with the resource files downloaded, and the start task's environment."""
    root = tmp_path / "node"
    work = root / "startup" / "wd"
    shared = root / "shared"
    work.mkdir(parents=True)
    shared.mkdir()
    shutil.copy(BOOTSTRAP, work / BOOTSTRAP_FILE)
    (work / CONSTRAINTS_FILE).write_bytes(launch_constraints())
    if wheel is not None:
        shutil.copy(wheel, work / wheel.name)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    if gpu:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] && echo "{STUB_GPU}"\nexit 0\n')
        smi.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(root / "home"),
        "AZ_BATCH_NODE_ROOT_DIR": str(root),
        "AZ_BATCH_NODE_SHARED_DIR": str(shared),
        "AZ_BATCH_NODE_STARTUP_DIR": str(root / "startup"),
        "AZ_BATCH_TASK_WORKING_DIR": str(work),
        "WORKPOOL_NODE_EXTRAS": "",  # no index here: tensorflow[and-cuda] cannot be fetched
        "PIP_NO_INDEX": "1",
        "PYTHONPATH": SITE_PACKAGES,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "WORKPOOL_NODE_CONSTRAINTS": CONSTRAINTS_FILE,
    }
    if wheel is not None:
        env["WORKPOOL_NODE_WHEEL"] = wheel.name
    return work, env


def shipped(work: Path) -> NodeFiles:
    """The files in the start task's folder as `launch` shipped them: each with the sha256 it has now."""

    def file(name: str) -> ShippedFile:
        return ShippedFile(
            name, name, f"https://example.invalid/{name}", sha256=file_sha256((work / name).read_bytes())
        )

    wheels = sorted(p.name for p in work.glob("*.whl"))
    return NodeFiles(file(BOOTSTRAP_FILE), file(wheels[0]) if wheels else None, file(CONSTRAINTS_FILE))


def start_task(work: Path, env: dict[str, str], files: NodeFiles | None = None) -> subprocess.CompletedProcess[str]:
    """The start task's command line, exactly as the launcher sends it (with the files' sha256)."""
    return subprocess.run(
        bootstrap_command(files or shipped(work)),
        shell=True,
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_the_bootstrap_installs_the_wheel_into_the_shared_virtualenv(tmp_path: Path, wheel: Path) -> None:
    work, env = node(tmp_path, wheel)

    result = start_task(work, env)

    assert result.returncode == 0, result.stderr
    consumer = Path(env["AZ_BATCH_NODE_SHARED_DIR"]) / "workpool" / "venv" / "bin" / "consumer"
    assert consumer.is_file()
    assert f"installing {wheel.name}" in result.stderr and "ready:" in result.stderr
    assert "accelerator: 0 GPU(s) listed by the driver; check passed" in result.stdout
    # The consumer task's command line runs from there.
    helped = subprocess.run(
        ["/bin/bash", "-c", 'exec "$AZ_BATCH_NODE_SHARED_DIR/workpool/venv/bin/consumer" run --help'],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "--allow-cpu" in helped.stdout


@pytest.mark.slow
def test_a_second_run_of_the_start_task_keeps_the_virtualenv_a_consumer_runs_from(tmp_path: Path, wheel: Path) -> None:
    work, env = node(tmp_path, wheel)
    assert start_task(work, env).returncode == 0
    venv = Path(env["AZ_BATCH_NODE_SHARED_DIR"]) / "workpool" / "venv"
    real = venv.resolve()
    # A consumer is running from it (Batch may re-run a start task without a reboot).
    consumer = subprocess.Popen(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sys, time, workpool; print(workpool.__file__, flush=True); time.sleep(600)",
        ],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert consumer.stdout is not None
        assert Path(consumer.stdout.readline().strip()).resolve().is_relative_to(real)  # the installed wheel
        marker = real / "lib"
        before = marker.stat().st_ino

        again = start_task(work, env)

        assert again.returncode == 0, again.stderr
        assert "already holds" in again.stderr and "installing" not in again.stderr
        assert venv.resolve() == real and marker.stat().st_ino == before
        assert consumer.poll() is None  # still running, its files untouched
    finally:
        consumer.kill()
        consumer.communicate(timeout=30)


def test_a_tampered_wheel_fails_the_start_task_naming_its_hash_before_anything_runs(
    tmp_path: Path, wheel: Path
) -> None:
    work, env = node(tmp_path, wheel)
    files = shipped(work)  # what launch uploaded
    assert files.wheel is not None and files.wheel.sha256
    tampered = work / wheel.name
    tampered.write_bytes(tampered.read_bytes() + b"\0")  # replaced in storage after launch

    result = start_task(work, env, files)

    assert result.returncode == 1
    assert f"{wheel.name} has sha256 {file_sha256(tampered.read_bytes())}" in result.stderr
    assert f"expected sha256 {files.wheel.sha256}" in result.stderr
    assert "workpool-bootstrap" not in result.stderr  # the bootstrap never ran
    assert not (Path(env["AZ_BATCH_NODE_SHARED_DIR"]) / "workpool").exists()


def test_a_tampered_bootstrap_never_runs(tmp_path: Path) -> None:
    work, env = node(tmp_path, None)
    files = shipped(work)
    (work / BOOTSTRAP_FILE).write_text('#!/bin/bash\necho pwned > "$AZ_BATCH_NODE_SHARED_DIR/pwned"\n')

    result = start_task(work, env, files)

    assert result.returncode == 1 and f"{BOOTSTRAP_FILE} has sha256" in result.stderr
    assert not (Path(env["AZ_BATCH_NODE_SHARED_DIR"]) / "pwned").exists()


@pytest.mark.slow
def test_a_node_whose_gpus_tensorflow_cannot_see_fails_its_start_task_saying_so(tmp_path: Path, wheel: Path) -> None:
    work, env = node(tmp_path, wheel, gpu=True)

    result = start_task(work, env)

    assert result.returncode == 1
    assert "this machine has 1 GPU(s) (GPU 0: NVIDIA A100 80GB PCIe" in result.stderr
    assert "TensorFlow sees none" in result.stderr and "tensorflow[and-cuda]" in result.stderr
    assert result.stderr.rstrip().endswith("workpool-bootstrap: FAILED: accelerator check (see the line above)")


@pytest.mark.slow
def test_allow_cpu_lets_such_a_node_start(tmp_path: Path, wheel: Path) -> None:
    work, env = node(tmp_path, wheel, gpu=True)
    env["WORKPOOL_ALLOW_CPU"] = "true"

    result = start_task(work, env)

    assert result.returncode == 0, result.stderr
    assert "TensorFlow sees none" in result.stderr and "scoring on the CPU as --allow-cpu asks" in result.stderr


def test_a_package_that_cannot_be_installed_fails_the_start_task_with_pips_reason(tmp_path: Path) -> None:
    work, env = node(tmp_path, None)
    env["WORKPOOL_NODE_PACKAGE"] = "workpool-does-not-exist==9.9"

    result = start_task(work, env)

    assert result.returncode == 1
    assert "No matching distribution found for workpool-does-not-exist==9.9" in result.stderr
    assert "FAILED: pip could not install workpool-does-not-exist==9.9" in result.stderr


def test_a_missing_wheel_is_named(tmp_path: Path) -> None:
    work, env = node(tmp_path, None)
    env["WORKPOOL_NODE_WHEEL"] = "workpool-0.1.0-py3-none-any.whl"

    result = start_task(work, env)

    assert result.returncode == 1
    assert "the wheel workpool-0.1.0-py3-none-any.whl was not downloaded" in result.stderr


@pytest.mark.slow
def test_consumer_run_refuses_the_cpu_of_a_gpu_machine_unless_allowed(tmp_path: Path) -> None:
    _, env = node(tmp_path, None, gpu=True)
    env.update(
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        WORKPOOL_HOME=str(tmp_path / "home"),
        CUDA_VISIBLE_DEVICES="0",  # one worker, pinned, as `--workers auto` starts it
    )
    command = [sys.executable, "-m", "consumer", "run", "--workers", "1", "--idle-exit-s", "0.5"]

    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    allowed = subprocess.run(
        [*command, "--allow-cpu"], env=env, capture_output=True, text=True, timeout=300, check=False
    )

    assert refused.returncode == 1
    assert "TensorFlow sees none" in refused.stderr and "--allow-cpu" in refused.stderr
    assert "Processed" not in refused.stdout
    assert allowed.returncode == 0, allowed.stderr
    assert "scoring on the CPU as --allow-cpu asks" in allowed.stderr
    assert "Processed 0 images" in allowed.stdout


def test_the_wheel_is_content_addressed_and_cached(tmp_path: Path) -> None:
    proj = project()
    digest = source_digest(proj)
    assert digest == source_digest(proj)
    cache = tmp_path / "cache"
    first = build_wheel(proj, digest, cache=cache)
    stamp = first.stat().st_mtime_ns
    assert build_wheel(proj, digest, cache=cache) == first and first.stat().st_mtime_ns == stamp
    assert first.parent.name == digest[:16] and first.name == "workpool-0.1.0-py3-none-any.whl"
    assert os.access(first, os.R_OK)


@pytest.mark.parametrize(
    ("size", "flag", "code"),
    [
        ("Standard_NC24ads_A100_v4", None, 1),  # a GPU size showing no GPU: refused
        ("Standard_ND96isr_H100_v5", None, 1),
        ("Standard_NV36ads_A10_v5", None, 1),
        ("Standard_NC24ads_A100_v4", "--allow-cpu", 0),  # allowed, with a warning
        ("Standard_D4s_v5", None, 0),  # not a GPU size: nothing to miss
    ],
)
def test_a_gpu_size_with_no_visible_gpu_fails_the_accelerator_check(
    tmp_path: Path, size: str, flag: str | None, code: int
) -> None:
    _, env = node(tmp_path, None)  # no nvidia-smi on PATH: no GPU visible
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), WORKPOOL_VM_SIZE=size)

    result = subprocess.run(
        [sys.executable, "-m", "consumer.accelerator", *([flag] if flag else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == code, result.stdout + result.stderr
    if size.startswith("Standard_N"):
        assert f"this node is a GPU size ({size}) but no GPU is visible" in result.stderr
        assert ("refusing to score on the CPU" in result.stderr) == (flag is None)


def test_launch_refuses_an_environment_whose_keras_lacks_the_safe_mode_fixes(tmp_path: Path) -> None:
    """A Keras below 3.14 where launch runs (a real distribution on the path) is refused, naming the floor."""
    old = tmp_path / "site" / "keras-3.13.2.dist-info"
    old.mkdir(parents=True)
    (old / "METADATA").write_text("Metadata-Version: 2.1\nName: keras\nVersion: 3.13.2\n")
    sys.path.append(str(old.parent))
    try:
        with pytest.raises(SettingsError) as refused:
            launch_constraints()
    finally:
        sys.path.remove(str(old.parent))

    assert "keras 3.13.2" in str(refused.value) and "keras >= 3.14" in str(refused.value)
    pins = launch_constraints().decode()  # this environment's own Keras passes
    assert "\nkeras==3." in pins and "\ntensorflow==" in pins and "\nworkpool==" not in pins
