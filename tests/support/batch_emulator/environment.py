"""The base environment of every process on an emulated node, and what the emulator adds to it.

A real Batch node starts from its image: a PATH with the system tools, no Python packages of
ours. The emulator starts each node process from a small, explicit environment (never the test
process's own, so no WORKPOOL_* or storage variable leaks in: a node sees only what the Batch
API handed it) and adds, on purpose, three things that make installs fast and safe here:

- `PYTHONPATH` = a *dependencies view*: a folder of links to everything installed in this
  project's virtualenv **except the project itself** (workpool, producer, consumer,
  orchestration, their dist-info and editable finders) and pip. A venv the start task creates
  therefore finds TensorFlow, the Azure SDKs, ... already installed, so `pip install <wheel>`
  installs only the uploaded wheel itself, and the code the consumer runs is the wheel's.
- `PIP_NO_INDEX=1`, `PIP_CONFIG_FILE=/dev/null`: nothing is downloaded from an index and this
  machine's pip configuration is ignored; a requirement that is not already installed fails as
  it would on a node without network.
- `PATH` starts with the emulator's own `bin/`, the node image's programs: `python3` and
  `python3.11` are the interpreter this project's virtualenv was made from (so the node's venv
  can use the dependencies view: same ABI), `python3.12`...`python3.14` are "not installed"
  (this machine's pyenv has them, a node image would not, and their ABI would not match);
  `apt-get`/`apt` install nothing (never touch the test machine's packages); and any command a
  test puts there (`nvidia-smi` for the accelerator check). No `nvidia-smi` by default: the
  node has no GPU.
"""

from __future__ import annotations

import os
import shlex
import sys
import sysconfig
from pathlib import Path

# Top-level names in site-packages that belong to this project (or to pip): kept out of the
# dependencies view, so a node only has them once its start task installs them.
_PROJECT_PACKAGES = {"workpool", "producer", "consumer", "orchestration"}
_EXCLUDED_PREFIXES = ("__editable__", "_workpool", "workpool-", "pip", "pip-", "__pycache__")

APT_STUB = """#!/bin/sh
echo "emulated Batch node: '$(basename "$0") $*' skipped (the emulator installs no system packages)" >&2
exit 0
"""


def python_wrapper() -> str:
    """The node image's `python3`: this project's base interpreter."""
    base = getattr(sys, "_base_executable", sys.executable)
    return f'#!/bin/sh\nexec {shlex.quote(base)} "$@"\n'


NOT_INSTALLED = """#!/bin/sh
echo "$(basename "$0"): not installed on the emulated Batch node" >&2
exit 127
"""


def write_image_commands(bin_dir: Path) -> None:
    """The programs every emulated node has (see the module docstring)."""
    write_command(bin_dir, "apt-get", APT_STUB)
    write_command(bin_dir, "apt", APT_STUB)
    write_command(bin_dir, "python3", python_wrapper())
    write_command(bin_dir, "python3.11", python_wrapper())
    for version in ("3.12", "3.13", "3.14"):
        write_command(bin_dir, f"python{version}", NOT_INSTALLED)


def nvidia_smi_stub(gpus: int = 1, name: str = "NVIDIA A100 80GB PCIe") -> str:
    """An `nvidia-smi` that lists `gpus` GPUs (for `-L` and for the query form)."""
    lines = "\n".join(f"GPU {i}: {name} (UUID: GPU-emulated-{i:04d})" for i in range(gpus))
    query = "\n".join(f"{i}, {name}" for i in range(gpus))
    return f"""#!/bin/sh
case "$*" in
  *--query-gpu*|*--format*) printf '%s\\n' "{query}" ;;
  *) printf '%s\\n' "{lines}" ;;
esac
exit 0
"""


def dependencies_view(folder: Path, site_packages: Path | None = None) -> Path:
    """Links to every installed distribution except this project and pip (see module doc)."""
    source = site_packages or Path(sysconfig.get_paths()["purelib"])
    folder.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        name = entry.name
        top = name.split(".", 1)[0].split("-", 1)[0]
        if top in _PROJECT_PACKAGES or name.startswith(_EXCLUDED_PREFIXES) or name.endswith(".pth"):
            continue
        link = folder / name
        if not link.exists():
            link.symlink_to(entry)
    return folder


def write_command(bin_dir: Path, name: str, script: str) -> Path:
    """Put an executable `name` on every node's PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(script)
    path.chmod(0o755)
    return path


def base_environment(bin_dir: Path, deps: Path, home: Path) -> dict[str, str]:
    """What a node process starts from, before Batch's own and the task's variables."""
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(deps),
        "PIP_NO_INDEX": "1",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
        # TensorFlow's start-up chatter only; it changes nothing the tests check.
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    # pyenv's shims (this machine's `python3`) find their versions through PYENV_ROOT, which
    # defaults to $HOME/.pyenv: keep it pointing at the real one.
    for key in ("PYENV_ROOT", "PYENV_VERSION", "TMPDIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env
