"""Ship the code you run: a wheel of this very project, uploaded for cluster nodes to install.

`launch` builds a wheel from the project's source tree (`pip wheel --no-deps`, in a scratch copy
so the tree stays clean), caches it by the content of the sources, and uploads it to the node-files
container (WORKPOOL_NODE_FILES: not the result container, which every consumer can write; nodes
only read it) under a content-addressed name:

    wheels/<sha256 of the sources, 16 hex>/workpool-<version>-py3-none-any.whl
    wheels/<sha256 of the sources, 16 hex>/workpool-bootstrap.sh   (orchestration/node/bootstrap.sh)
    wheels/<…>/constraints-<sha256, 16 hex>.txt   (the dependency versions launch runs with)

The folder carries the digest so the wheel keeps a file name pip accepts. Each shipped file also
carries its own sha256 (`ShippedFile.sha256`): the start task checks it before anything runs, so a
file replaced in storage after `launch` is refused on the node. Nodes get the files as Batch
resource files: read with the pool's managed identity, or through a short-lived read-only SAS
made with the storage account key (or, signed in with Entra ID, a user delegation key). Nothing
is installed from a package index by a guessable name.

Reusable by every backend that installs this project on nodes: `file_sha256`, `project`,
`source_digest`, `build_wheel`, `launch_constraints`, `planned_files`, `ship_node_files`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import workpool
from orchestration.node import BOOTSTRAP, BOOTSTRAP_FILE
from workpool.errors import NotFoundError, SettingsError, WorkpoolError
from workpool.settings import Settings, StorageMode, env_name
from workpool.storage.base import ObjectStore

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(workpool.__file__).resolve().parents[1]
WHEEL_PREFIX = "wheels/"
# Long enough for nodes added by Batch (Spot replacements) during a day's run; `launch` and
# `scale` renew it on the pool before they add nodes. A managed identity needs no SAS at all.
SAS_LIFETIME = timedelta(hours=24)
CONSTRAINTS_FILE = "workpool-constraints.txt"
# The oldest Keras nodes may run: 3.14 closes the safe-mode gaps of `.keras` loading.
KERAS_FLOOR = (3, 14)
# Never pinned for nodes: the installer itself and this project (installed from its wheel).
_UNPINNED = {"pip", "setuptools", "wheel", "uv"}
_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
_BUILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class Project:
    root: Path
    name: str
    version: str
    packages: tuple[str, ...]
    extra_files: tuple[str, ...]

    @property
    def wheel_file(self) -> str:
        return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class ShippedFile:
    """One file for the nodes: its name on the node, its blob, and where nodes read it.

    `query` is the SAS (a secret: it grants read access until it expires); None when nodes
    read with the pool's managed identity, or in a dry run.
    """

    file_name: str
    blob_name: str
    url: str
    query: str | None = None
    sha256: str | None = None  # of the content nodes must get; None: a wheel a dry run has not built

    @property
    def download_url(self) -> str:
        return self.url if self.query is None else f"{self.url}?{self.query}"


@dataclass(frozen=True)
class NodeFiles:
    """What the start task downloads: the bootstrap script, the project wheel, the pip constraints.

    `wheel` is None when WORKPOOL_NODE_PACKAGE overrides what nodes install.
    """

    bootstrap: ShippedFile
    wheel: ShippedFile | None
    constraints: ShippedFile | None = None


def project(root: Path = PROJECT_ROOT) -> Project:
    """The project whose code this process runs; SettingsError when it has no source tree to build from."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise SettingsError(
            f"cluster nodes install a wheel built from this project's source tree, and {root} has none "
            f"(no pyproject.toml): run from a checkout, or set {env_name('node_package')} to a pinned wheel "
            "URL or requirement of this exact version"
        )
    meta = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    packages = tuple(sorted({p.parent.name for p in root.glob("*/__init__.py") if p.parent.name in _TOP_PACKAGES}))
    extra = tuple(name for name in ("pyproject.toml", "README.md", "LICENSE") if (root / name).is_file())
    return Project(root, str(meta["name"]), str(meta["version"]), packages, extra)


_TOP_PACKAGES = {"workpool", "producer", "consumer", "orchestration"}


def _source_files(proj: Project) -> list[Path]:
    files = [proj.root / name for name in proj.extra_files]
    for package in proj.packages:
        for path in sorted((proj.root / package).rglob("*")):
            if path.is_file() and not _SKIP_DIRS.intersection(path.parts) and path.suffix != ".pyc":
                files.append(path)
    return files


def source_digest(proj: Project) -> str:
    """sha256 over every source file's path and content: the wheel's content address."""
    digest = hashlib.sha256()
    for path in _source_files(proj):
        digest.update(path.relative_to(proj.root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def blob_folder(digest: str) -> str:
    return f"{WHEEL_PREFIX}{digest[:16]}/"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workpool" / "wheels"


def build_wheel(proj: Project, digest: str, cache: Path | None = None) -> Path:
    """The wheel of these sources: from the cache, else built now with `pip wheel --no-deps`."""
    cached = (cache or cache_dir()) / digest[:16] / proj.wheel_file
    if cached.is_file():
        return cached
    log.info("building %s from %s (pip wheel --no-deps)", proj.wheel_file, proj.root)
    with tempfile.TemporaryDirectory(prefix="workpool-wheel-") as scratch:
        src = Path(scratch) / "src"
        out = Path(scratch) / "out"
        for path in _source_files(proj):
            target = src / path.relative_to(proj.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out)]
        if _has_setuptools():
            command.append("--no-build-isolation")  # offline and fast: the build backend is here already
        built = subprocess.run(
            [*command, str(src)], capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S, check=False
        )
        wheels = sorted(out.glob("*.whl"))
        if built.returncode != 0 or len(wheels) != 1:
            tail = "\n".join((built.stderr or built.stdout).strip().splitlines()[-15:])
            code = built.returncode
            raise WorkpoolError(f"building the wheel of {proj.root} failed (pip wheel exit {code}):\n{tail}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        staged = cached.with_name(cached.name + f".{os.getpid()}.tmp")
        shutil.copyfile(wheels[0], staged)
        os.replace(staged, cached)  # atomic: a concurrent launch sees the whole wheel or none
    return cached


def _has_setuptools() -> bool:
    return importlib.util.find_spec("setuptools") is not None


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def launch_constraints(proj: Project | None = None) -> bytes:
    """pip constraints: every distribution installed here (what `launch` was tested with), pinned `==`.

    Nodes install with `-c` on it, so a dependency resolves to the version this machine runs,
    never to whatever an index serves that day. Refuses (SettingsError) a Keras below KERAS_FLOOR.
    """
    own = {_canonical((proj or project()).name)} if proj is not None else {"workpool"}
    pins: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = _canonical(dist.metadata["Name"] or "")
        if name and name not in own and name not in _UNPINNED:
            pins[name] = dist.version
    keras = pins.get("keras")
    if keras is not None and _release(keras) < KERAS_FLOOR:
        floor = ".".join(map(str, KERAS_FLOOR))
        raise SettingsError(
            f"this environment has keras {keras}; nodes need keras >= {floor} (its safe-mode fixes): "
            f"`pip install 'keras>={floor}'` here, then launch again"
        )
    lines = ["# workpool: the dependency versions `launch` ran with; nodes install under these pins"]
    lines += [f"{name}=={version}" for name, version in sorted(pins.items())]
    return ("\n".join(lines) + "\n").encode()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _release(version: str) -> tuple[int, ...]:
    numbers = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
    return tuple(numbers)


def planned_files(settings: Settings, *, with_wheel: bool = True) -> NodeFiles:
    """What `ship_node_files` would upload, for `--dry-run`: from the sources; nothing built, signed or sent.

    The wheel's sha256 is known when this version's wheel is in the local cache, else None.
    """
    proj = project() if with_wheel else None
    digest = source_digest(proj) if proj is not None else _bootstrap_digest()
    folder = blob_folder(digest)
    bootstrap = _planned(settings, BOOTSTRAP_FILE, folder + BOOTSTRAP_FILE, file_sha256(BOOTSTRAP.read_bytes()))
    wheel = None
    if proj is not None:
        cached = cache_dir() / digest[:16] / proj.wheel_file
        sha = file_sha256(cached.read_bytes()) if cached.is_file() else None
        wheel = _planned(settings, proj.wheel_file, folder + proj.wheel_file, sha)
    pins = launch_constraints(proj)
    constraints = _planned(settings, CONSTRAINTS_FILE, _constraints_blob(folder, pins), file_sha256(pins))
    return NodeFiles(bootstrap, wheel, constraints)


def _planned(settings: Settings, file_name: str, blob_name: str, sha256: str | None) -> ShippedFile:
    return ShippedFile(file_name, blob_name, _blob_url(settings, blob_name), sha256=sha256)


def _constraints_blob(folder: str, pins: bytes) -> str:
    return f"{folder}constraints-{file_sha256(pins)[:16]}.txt"


def node_files_store(settings: Settings) -> ObjectStore:
    """The container nodes install from (WORKPOOL_NODE_FILES), not the result container."""
    from workpool.storage import blob_store

    return blob_store(settings, settings.node_files)


def ship_node_files(settings: Settings, *, identity: bool, with_wheel: bool = True) -> NodeFiles:
    """Build (or reuse) the wheel, upload it, the bootstrap and the constraints under their content address.

    Returns where nodes read them and the sha256 each must have: with `identity` through the
    pool's managed identity (no SAS is made), else through read-only SAS links valid for
    SAS_LIFETIME. A blob already there is read back and replaced when its content differs (a
    wheel rebuilt elsewhere, or a file replaced in storage). Without `with_wheel`
    (WORKPOOL_NODE_PACKAGE overrides the wheel) the wheel is not uploaded.
    """
    proj = project() if with_wheel else None
    digest = source_digest(proj) if proj is not None else _bootstrap_digest()
    folder = blob_folder(digest)
    store = node_files_store(settings)
    pins = launch_constraints(proj)
    uploads: list[tuple[str, str, Callable[[], bytes]]] = [
        (BOOTSTRAP_FILE, folder + BOOTSTRAP_FILE, BOOTSTRAP.read_bytes)
    ]
    if proj is not None:
        uploads.append((proj.wheel_file, folder + proj.wheel_file, lambda: build_wheel(proj, digest).read_bytes()))
    uploads.append((CONSTRAINTS_FILE, _constraints_blob(folder, pins), lambda: pins))
    shipped = {}
    for file_name, name, content in uploads:
        data = content()
        sha = file_sha256(data)
        _upload_unless_same(store, name, data, sha)
        url = _blob_url(settings, name)
        query = None if identity else _read_sas(settings, name)
        shipped[file_name] = ShippedFile(file_name, name, url, query, sha)
    wheel = shipped.get(proj.wheel_file) if proj is not None else None
    return NodeFiles(shipped[BOOTSTRAP_FILE], wheel, shipped[CONSTRAINTS_FILE])


def _upload_unless_same(store: ObjectStore, name: str, data: bytes, sha: str) -> None:
    if store.exists(name):
        if file_sha256(store.read(name)) == sha:
            return
        log.warning("%s in the node-files container differs from this launch's (sha256 %s): replacing it", name, sha)
    try:
        store.write(name, data)
    except NotFoundError:
        store.ensure()  # the node-files container does not exist before the first launch
        store.write(name, data)
    log.info("uploaded %s (%d KiB, sha256 %s) to the node-files container", name, len(data) // 1024, sha)


def _bootstrap_digest() -> str:
    return hashlib.sha256(BOOTSTRAP.read_bytes()).hexdigest()


def _blob_url(settings: Settings, name: str) -> str:
    from workpool.azure_clients import blob_service

    if not settings.uses_azure_storage:
        raise SettingsError(
            f"cluster nodes read the wheel from Azure Storage: set AZURE_STORAGE_CONNECTION_STRING or "
            f"{env_name('account_url')}"
        )
    url = blob_service(settings).get_blob_client(settings.node_files, name).url
    return url.split("?", 1)[0]


def _read_sas(settings: Settings, name: str) -> str:
    """A read-only SAS for one blob, valid for SAS_LIFETIME: made with the account key, else a user delegation key."""
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    start = datetime.now(UTC) - timedelta(minutes=5)  # node clocks may run a little behind
    expiry = datetime.now(UTC) + SAS_LIFETIME
    permission = BlobSasPermissions(read=True)
    account, key = _account_and_key(settings)
    if key is not None:
        return generate_blob_sas(
            account, settings.node_files, name, account_key=key, permission=permission, start=start, expiry=expiry
        )
    if settings.storage_mode is StorageMode.IDENTITY:
        from workpool.azure_clients import azure_errors, blob_service

        with azure_errors("getting a user delegation key to share the wheel with the nodes"):
            delegation = blob_service(settings).get_user_delegation_key(start, expiry)
        return generate_blob_sas(
            account,
            settings.node_files,
            name,
            user_delegation_key=delegation,
            permission=permission,
            start=start,
            expiry=expiry,
        )
    raise SettingsError(
        "nodes cannot be given a read-only link to the wheel: a SAS token cannot sign another one. Set "
        f"{env_name('managed_identity_id')} (nodes read it with their identity), or use a connection string "
        f"with an account key, or set {env_name('node_package')} to a wheel URL you host"
    )


def _account_and_key(settings: Settings) -> tuple[str, str | None]:
    parts: dict[str, str] = {}
    if settings.connection_string is not None:
        for item in settings.connection_string.get_secret_value().split(";"):
            key, _, value = item.partition("=")
            parts[key.strip().lower()] = value.strip()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        # Azurite's well-known development account (public, documented by Microsoft).
        return "devstoreaccount1", _AZURITE_KEY
    account = parts.get("accountname") or _account_of_url(settings)
    return account, parts.get("accountkey") or None


def _account_of_url(settings: Settings) -> str:
    url = settings.account_url or ""
    host = urlparse(url).hostname or ""
    if host and not host.replace(".", "").isdigit() and host != "localhost":
        return host.split(".", 1)[0]
    path = urlparse(url).path.strip("/")
    return path.split("/", 1)[0]  # Azurite style: http://127.0.0.1:10000/<account>


_AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
