"""Ship the code you run: a wheel of this very project, uploaded for cluster nodes to install.

`launch` builds a wheel from the project's source tree (`pip wheel --no-deps`, in a scratch copy
so the tree stays clean), caches it by the content of the sources, and uploads it to the result
store under a content-addressed name:

    wheels/<sha256 of the sources, 16 hex>/workpool-<version>-py3-none-any.whl
    wheels/<sha256 of the sources, 16 hex>/workpool-bootstrap.sh   (orchestration/node/bootstrap.sh)

The folder carries the digest so the wheel keeps a file name pip accepts. Nodes get it as a Batch
resource file: read with the pool's managed identity, or through a short-lived read-only SAS
made with the storage account key (or, signed in with Entra ID, a user delegation key). Nothing
is installed from a package index by a guessable name.
"""

from __future__ import annotations

import hashlib
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

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(workpool.__file__).resolve().parents[1]
WHEEL_PREFIX = "wheels/"
# Long enough for nodes added by Batch (Spot replacements) during a day's run; `launch` and
# `scale` renew it on the pool before they add nodes. A managed identity needs no SAS at all.
SAS_LIFETIME = timedelta(hours=24)
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

    @property
    def download_url(self) -> str:
        return self.url if self.query is None else f"{self.url}?{self.query}"


@dataclass(frozen=True)
class NodeFiles:
    """What the start task downloads: the bootstrap script and the project wheel it installs.

    `wheel` is None when WORKPOOL_NODE_PACKAGE overrides what nodes install.
    """

    bootstrap: ShippedFile
    wheel: ShippedFile | None


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


def planned_files(settings: Settings, *, with_wheel: bool = True) -> NodeFiles:
    """What `ship_node_files` would upload, for `--dry-run`: from the sources; nothing built, signed or sent."""
    proj = project() if with_wheel else None
    folder = blob_folder(source_digest(proj) if proj is not None else _bootstrap_digest())
    bootstrap = ShippedFile(BOOTSTRAP_FILE, folder + BOOTSTRAP_FILE, _blob_url(settings, folder + BOOTSTRAP_FILE))
    wheel = None
    if proj is not None:
        wheel = ShippedFile(proj.wheel_file, folder + proj.wheel_file, _blob_url(settings, folder + proj.wheel_file))
    return NodeFiles(bootstrap, wheel)


def ship_node_files(settings: Settings, *, identity: bool, with_wheel: bool = True) -> NodeFiles:
    """Build (or reuse) the wheel, upload it and the bootstrap once under their content address.

    Returns where nodes read them: with `identity` through the pool's managed identity (no SAS
    is made), else through read-only SAS links valid for SAS_LIFETIME. Without `with_wheel`
    (WORKPOOL_NODE_PACKAGE overrides the wheel) only the bootstrap is uploaded.
    """
    from workpool.storage import open_result_store

    proj = project() if with_wheel else None
    digest = source_digest(proj) if proj is not None else _bootstrap_digest()
    folder = blob_folder(digest)
    store = open_result_store(settings)
    uploads: list[tuple[str, Callable[[], bytes]]] = [(BOOTSTRAP_FILE, BOOTSTRAP.read_bytes)]
    if proj is not None:
        uploads.append((proj.wheel_file, lambda: build_wheel(proj, digest).read_bytes()))
    shipped = []
    for file_name, content in uploads:
        name = folder + file_name
        if not store.exists(name):
            data = content()
            try:
                store.write(name, data)
            except NotFoundError:
                store.ensure()  # the result container may not exist before the first enqueue
                store.write(name, data)
            log.info("uploaded %s (%d KiB) to the result store", name, len(data) // 1024)
        url = _blob_url(settings, name)
        shipped.append(ShippedFile(file_name, name, url, None if identity else _read_sas(settings, name)))
    return NodeFiles(shipped[0], shipped[1] if len(shipped) > 1 else None)


def _bootstrap_digest() -> str:
    return hashlib.sha256(BOOTSTRAP.read_bytes()).hexdigest()


def _blob_url(settings: Settings, name: str) -> str:
    from workpool.azure_clients import blob_service

    if not settings.uses_azure_storage:
        raise SettingsError(
            f"cluster nodes read the wheel from Azure Storage: set AZURE_STORAGE_CONNECTION_STRING or "
            f"{env_name('account_url')}"
        )
    url = blob_service(settings).get_blob_client(settings.results, name).url
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
            account, settings.results, name, account_key=key, permission=permission, start=start, expiry=expiry
        )
    if settings.storage_mode is StorageMode.IDENTITY:
        from workpool.azure_clients import azure_errors, blob_service

        with azure_errors("getting a user delegation key to share the wheel with the nodes"):
            delegation = blob_service(settings).get_user_delegation_key(start, expiry)
        return generate_blob_sas(
            account,
            settings.results,
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
