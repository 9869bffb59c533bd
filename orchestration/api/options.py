"""The autoscaler's options, one set for `launch --autoscale` and `orchestration autoscale`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestration.autoscale.deadline import parse_deadline
from orchestration.autoscale.policy import Limits, parse_range
from workpool.pool_events import utcnow
from workpool.settings import Settings


@dataclass(frozen=True)
class Autoscale:
    """Size the pool from its queue between `min_nodes` and `max_nodes`.

    Options left as None take their WORKPOOL_AUTOSCALE_* setting. `deadline`: a duration (20m,
    1h30m), a time of day (14:30, local), an ISO time, or a datetime.
    """

    min_nodes: int
    max_nodes: int
    deadline: str | datetime | None = None
    idle_s: float | None = None
    batches_per_node: float | None = None
    cooldown_s: float | None = None
    interval_s: float | None = None

    @classmethod
    def parse(cls, text: str, **options: float | str | datetime | None) -> Autoscale:
        """`"MIN:MAX"` (as `launch --autoscale` takes it) and the other options by name."""
        low, high = parse_range(text)
        return cls(low, high, **options)  # type: ignore[arg-type]

    def limits(self, settings: Settings) -> Limits:
        """The policy's limits (UsageError names the flag of a bad value)."""
        return Limits(
            min_nodes=self.min_nodes,
            max_nodes=self.max_nodes,
            batches_per_node=settings.autoscale_batches_per_node
            if self.batches_per_node is None
            else self.batches_per_node,
            idle_s=settings.autoscale_idle_s if self.idle_s is None else self.idle_s,
            cooldown_s=settings.autoscale_cooldown_s if self.cooldown_s is None else self.cooldown_s,
        )

    def deadline_at(self, now: datetime | None = None) -> datetime | None:
        if self.deadline is None or isinstance(self.deadline, datetime):
            return self.deadline
        return parse_deadline(self.deadline, now or utcnow())

    def detached_args(self, settings: Settings) -> list[str]:
        """The options a detached `orchestration autoscale` needs besides --min/--max/--deadline."""
        limits = self.limits(settings)
        args = ["--idle-s", str(limits.idle_s), "--batches-per-node", str(limits.batches_per_node)]
        args += ["--cooldown-s", str(limits.cooldown_s)]
        if self.interval_s is not None:
            args += ["--interval-s", str(self.interval_s)]
        return args

    def describe(self) -> str:
        return f"{self.min_nodes}:{self.max_nodes}"
