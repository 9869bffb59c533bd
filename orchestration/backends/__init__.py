"""Launcher backends, one file each, imported lazily: the cluster SDKs load only when used."""

from __future__ import annotations

from orchestration.launcher import Launcher
from workpool.errors import UsageError
from workpool.settings import Settings

BACKENDS = ("local", "aml", "azure-batch", "batchai")


def open_launcher(backend: str, settings: Settings) -> Launcher:
    """The launcher for `backend` (local | aml | azure-batch | batchai), configured by `settings`."""
    if backend == "local":
        from orchestration.backends.local import LocalLauncher

        return LocalLauncher(settings)
    if backend == "aml":
        from orchestration.backends.aml import AmlLauncher

        return AmlLauncher(settings)
    if backend == "batchai":
        from orchestration.backends.batchai import BatchAILauncher

        return BatchAILauncher(settings)
    if backend == "azure-batch":
        from orchestration.backends.azure_batch import AzureBatchLauncher

        return AzureBatchLauncher(settings)
    raise UsageError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
