"""The launcher interface: the one seam between orchestration and where consumers run.

A *node* is one machine's worth of consumers: a local process, a Batch AI single-node job, or
an Azure Batch compute node with its consumer task. Every backend can launch N nodes, scale to
M, list its nodes, tear down, and describe (for `--dry-run`) the requests it would send.

What every backend does alike lives here, around the backend's own `_launch`, `_scale`,
`_teardown` and `_describe`:

- **Node counts, one rule.** `launch`, `scale` and `describe` take 0 or more nodes. A backend
  whose pool cannot be created empty declares `min_launch_nodes = 1` (Azure Batch and Batch AI
  create their pool or cluster with its first node; a local pool can wait empty for `scale` or
  the autoscaler), and `scale` to 0 is always allowed (the pool stays, with no node). A backend
  may cap the size it runs well (`max_nodes`: the local one, 4 nodes per CPU core); more is
  refused unless forced (`--force`). Every refusal is a usage error (exit 2) naming `--nodes`.
- **Which backend runs a queue's pool** is recorded by a successful `launch` and forgotten by
  `teardown` (orchestration/deployment.py), so `scale`, `status` and `teardown` need no
  `--backend`.
- **Teardown of nothing** (never launched, or torn down already) succeeds and changes nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestration.deployment import forget_backend, record_backend
from workpool.errors import UsageError
from workpool.settings import Settings


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


@dataclass(frozen=True)
class LogSource:
    """One consumer's own output a backend can read (`orchestration logs`): a local node's log
    file, an Azure Batch task's stdout.txt or stderr.txt, an AML job's log."""

    node: str  # the node as `status` names it (or the task/job id while it has none)
    stream: str  # "log" (stdout and stderr together), "stdout" or "stderr"
    size: Callable[[], int | None]  # bytes written so far; None while there is no file
    read: Callable[[int], bytes]  # the bytes from an offset to the current end
    aliases: tuple[str, ...] = ()  # other names `--node` may give (a Batch task id)

    @property
    def label(self) -> str:
        return self.node if self.stream == "log" else f"{self.node} {self.stream}"


@dataclass
class ClusterState:
    """What `status` shows about the cluster beside the queue and runs."""

    backend: str
    target_nodes: int
    nodes: list[NodeInfo] = field(default_factory=list)
    detail: str = ""


class Launcher(ABC):
    name: str
    settings: Settings
    # The fewest nodes a pool can be launched with (see the module docstring).
    min_launch_nodes: int = 0

    # --- what every backend does alike --------------------------------------------------------
    def launch(self, nodes: int, *, force: bool = False) -> None:
        """Start `nodes` nodes running `consumer run`; returns once they are starting or up."""
        self.check_node_count(nodes, launching=True, force=force)
        self._launch(nodes)
        record_backend(self.settings, self.name)

    def scale(self, nodes: int, *, force: bool = False) -> None:
        """Grow or shrink to `nodes`. Shrinking stops nodes gracefully (their batches are released)."""
        self.check_node_count(nodes, launching=False, force=force)
        self._scale(nodes)

    def teardown(self, delete: bool = False) -> None:
        """Stop every node; with `delete`, remove the cluster or pool itself as well."""
        self._teardown(delete)
        forget_backend(self.settings)

    def describe(self, nodes: int, *, force: bool = False) -> list[PlannedRequest]:
        """The requests `launch(nodes)` would send, secrets redacted; sends nothing."""
        self.check_node_count(nodes, launching=True, force=force)
        return self._describe(nodes)

    def check_node_count(self, nodes: int, *, launching: bool, force: bool = False) -> None:
        """The one node-count rule (module docstring); a UsageError naming --nodes if broken."""
        least = self.min_launch_nodes if launching else 0
        if nodes < least:
            why = f" ({self.name} creates its pool with its first node; scale it to 0 later)" if least else ""
            raise UsageError(f"--nodes must be at least {least}{why}, got {nodes}")
        most = self.max_nodes()
        if most is not None and nodes > most and not force:
            raise UsageError(
                f"--nodes {nodes} is more than the {self.name} backend runs well here "
                f"({self.max_nodes_reason()}, at most {most}): pass --force to start them anyway"
            )

    def max_nodes(self) -> int | None:
        """The most nodes this backend runs well without --force; None: no limit of its own."""
        return None

    def max_nodes_reason(self) -> str:
        return "its limit"

    # --- each backend's own --------------------------------------------------------------------
    @abstractmethod
    def state(self) -> ClusterState:
        """Target size and every node with its state."""

    def failure(self) -> str | None:
        """Why the nodes can never run a consumer (every node failed to start), else None.

        Waiting for a drain asks this now and then, so a pool whose start task fails everywhere
        stops `launch --wait` with the reason instead of leaving it waiting for ever.
        """
        return None

    def log_sources(self) -> list[LogSource]:
        """The consumers' own logs, one source per node and stream (`orchestration logs`).

        A backend that can reach its consumers' output overrides this (local: the node log
        files; Azure Batch: each consumer task's stdout.txt and stderr.txt through the Batch
        API; AML: its jobs' logs). Secrets are redacted by the caller.
        """
        raise UsageError(f"the {self.name} backend cannot show its consumers' logs")

    # Not abstract, so a stand-in that replaces the public methods (a test's) needs none of them.
    def _launch(self, nodes: int) -> None:
        raise NotImplementedError

    def _scale(self, nodes: int) -> None:
        raise NotImplementedError

    def _teardown(self, delete: bool) -> None:
        raise NotImplementedError

    def _describe(self, nodes: int) -> list[PlannedRequest]:
        raise NotImplementedError
