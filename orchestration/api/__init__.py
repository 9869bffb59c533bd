"""The Python API (`from workpool import Pool, Run`): the one owner of every pool operation;
the `orchestration` and `producer` commands are its shell. See docs/python.md."""

from orchestration.api.options import Autoscale
from orchestration.api.pool import Pool
from orchestration.api.run import Run
from orchestration.reports.drain import DrainReport, WaitTimeout
from orchestration.reports.report import RunReport

__all__ = ["Autoscale", "DrainReport", "Pool", "Run", "RunReport", "WaitTimeout"]
