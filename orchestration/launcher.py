"""The launcher interface: the one seam between orchestration and where consumers run.

A *node* is one machine's worth of consumers: a local process, a Batch AI single-node job, or
an Azure Batch compute node with its consumer task. Every backend can launch N nodes, scale to
M, list its nodes, tear down, and describe (for `--dry-run`) the requests it would send.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NodeInfo:
    """One node as the backend sees it. `state` is backend-specific but human-readable."""

    id: str
    state: str
    detail: str = ""


@dataclass(frozen=True)
class PlannedRequest:
    """A request a launcher would send, for `--dry-run` (secrets already redacted)."""

    method: str
    path: str
    body: Any = None
    note: str = ""


@dataclass
class ClusterState:
    """What `status` shows about the cluster beside the queue and runs."""

    backend: str
    target_nodes: int
    nodes: list[NodeInfo] = field(default_factory=list)
    detail: str = ""


class Launcher(ABC):
    name: str

    @abstractmethod
    def launch(self, nodes: int) -> None:
        """Start `nodes` nodes running `consumer run`; returns once they are starting or up."""

    @abstractmethod
    def scale(self, nodes: int) -> None:
        """Grow or shrink to `nodes`. Shrinking stops nodes gracefully (their batches are released)."""

    @abstractmethod
    def state(self) -> ClusterState:
        """Target size and every node with its state."""

    @abstractmethod
    def teardown(self, delete: bool = False) -> None:
        """Stop every node; with `delete`, remove the cluster or pool itself as well."""

    @abstractmethod
    def describe(self, nodes: int) -> list[PlannedRequest]:
        """The requests `launch(nodes)` would send, secrets redacted; sends nothing."""

    def failure(self) -> str | None:
        """Why the nodes can never run a consumer (every node failed to start), else None.

        Waiting for a drain asks this now and then, so a pool whose start task fails everywhere
        stops `launch --wait` with the reason instead of leaving it waiting for ever.
        """
        return None
