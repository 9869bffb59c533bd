"""workpool: queue-driven, elastic batch scoring of images.

This package holds what the three roles (producer, consumer, orchestration) share: settings,
the message schema, errors, the work-queue interface with its backends, and the object stores
that serve as image sources and result stores.

`from workpool import Pool, Run` is the Python API (docs/python.md). It lives in the
orchestration role and is imported on first use (PEP 562), so `import workpool` stays cheap
and this package imports no role: the one exception to that rule is this lazy facade.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Autoscale", "Pool", "Run", "__version__"]

if TYPE_CHECKING:
    from orchestration.api import Autoscale, Pool, Run

_API = {"Autoscale", "Pool", "Run"}


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module("orchestration.api"), name)
    raise AttributeError(f"module 'workpool' has no attribute {name!r}")
