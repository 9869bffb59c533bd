"""The Python API (`from workpool import Pool, Run`): the one owner of every pool operation;
the `orchestration` and `producer` commands are its shell. See docs/python.md."""

from orchestration.api.options import Autoscale
from orchestration.api.pool import Pool
from orchestration.api.run import Run

__all__ = ["Autoscale", "Pool", "Run"]
