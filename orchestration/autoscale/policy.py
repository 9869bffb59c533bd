"""The autoscaling policy: one pure function from what the loop observed to the pool size wanted.

Counting, in batches (queue messages):

- `backlog`: visible messages, waiting for a consumer. Only these ask for *new* nodes:
  `ceil(backlog / batches_per_node)`.
- `in_flight`: messages leased by consumers (being scored, or prefetched). They are being
  worked on, so they never count as backlog (no node is started for them), but they hold the
  nodes working on them: the pool never shrinks below `min(current, in_flight)`, the most nodes
  those batches can occupy. Scaling in therefore only ever removes nodes that can be idle.
  `None` means the queue could not tell (Azure with 32 or more visible messages); then every
  current node counts as busy, which is true while that much work is waiting.
- a deadline: with a measured per-node rate, `ceil(remaining / (rate × seconds left))` nodes
  finish the remaining batches (backlog + in flight) in time; a deadline already passed asks
  for `max`.

The wanted size is the largest of those, within `[min, max]`. Then, against the current size:

- growing happens at once (activation from zero included);
- an empty queue (in flight included) holds the pool for `idle_s`, then scales it to `min`
  (zero when `min` is 0);
- any other shrink waits until `cooldown_s` has passed since the last change, so the size does
  not flap while a queue drains in bursts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from workpool.errors import UsageError


@dataclass(frozen=True)
class Limits:
    """The autoscaler's settings (`orchestration autoscale` flags)."""

    min_nodes: int = 0
    max_nodes: int = 1
    batches_per_node: float = 4.0
    idle_s: float = 60.0
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if self.min_nodes < 0:
            raise UsageError(f"--min must be 0 or more, got {self.min_nodes}")
        if self.max_nodes < max(self.min_nodes, 1):
            raise UsageError(f"--max must be at least 1 and at least --min ({self.min_nodes}), got {self.max_nodes}")
        if self.batches_per_node <= 0:
            raise UsageError(f"--batches-per-node must be more than 0, got {self.batches_per_node}")
        if self.idle_s < 0:
            raise UsageError(f"--idle-s must be 0 or more, got {self.idle_s}")
        if self.cooldown_s < 0:
            raise UsageError(f"--cooldown-s must be 0 or more, got {self.cooldown_s}")


@dataclass(frozen=True)
class Observation:
    """What the loop saw at `now` (seconds on the loop's clock)."""

    now: float
    current: int  # the pool's target size now
    backlog: int  # visible messages
    in_flight: int | None  # leased messages; None: the queue cannot tell
    idle_since: float | None = None  # when the queue was last seen becoming empty (in flight included)
    last_change_at: float | None = None  # when the autoscaler last changed the size
    rate_per_node: float | None = None  # batches per node-second, measured; None before any
    deadline_at: float | None = None  # the deadline on the same clock as `now`


@dataclass(frozen=True)
class Decision:
    target: int
    reason: str
    wanted: int  # the size the counts ask for, before cool-down and idle holds

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_range(text: str) -> tuple[int, int]:
    """`--autoscale MIN:MAX` → (min, max)."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--autoscale: expected MIN:MAX with whole numbers, like 0:3, got {text!r}")
    return int(parts[0]), int(parts[1])


def decide(obs: Observation, limits: Limits) -> Decision:
    """The pool size wanted now, and why."""
    work = obs.backlog + (obs.in_flight or 0)
    busy = obs.current if obs.in_flight is None else min(obs.current, obs.in_flight)
    for_backlog = math.ceil(obs.backlog / limits.batches_per_node)
    wanted, why = for_backlog, f"backlog {obs.backlog} / {limits.batches_per_node:g} per node → {for_backlog}"
    if busy > wanted:
        wanted, why = busy, f"{busy} node(s) may hold the {_count(obs.in_flight)} batch(es) in flight"
    if obs.deadline_at is not None and work > 0:
        left_s = obs.deadline_at - obs.now
        if left_s <= 0:
            wanted, why = limits.max_nodes, "deadline passed: as many nodes as allowed"
        elif obs.rate_per_node:
            for_deadline = math.ceil(work / (obs.rate_per_node * left_s))
            if for_deadline > wanted:
                wanted = for_deadline
                why = (
                    f"deadline in {left_s:.0f} s: {work} batch(es) at {obs.rate_per_node:.3g} batches/s per node "
                    f"→ {for_deadline}"
                )
    if wanted > limits.max_nodes:
        wanted, why = limits.max_nodes, f"{why}, capped at --max {limits.max_nodes}"
    if wanted < limits.min_nodes and work > 0:
        wanted, why = limits.min_nodes, f"{why}, raised to --min {limits.min_nodes}"

    if work == 0:
        return _when_empty(obs, limits)
    if wanted > obs.current:
        verb = "activate" if obs.current == 0 else "scale out"
        return Decision(wanted, f"{verb}: {why}", wanted)
    if wanted < obs.current:
        wait_s = _cooldown_left(obs, limits)
        if wait_s > 0:
            why = f"hold: cool-down {wait_s:.0f} s more before scaling in to {wanted} ({why})"
            return Decision(obs.current, why, wanted)
        return Decision(wanted, f"scale in: {why}", wanted)
    return Decision(obs.current, f"steady: {why}", wanted)


def _when_empty(obs: Observation, limits: Limits) -> Decision:
    """Queue empty, in flight included: hold for `idle_s`, then go to `min` (zero if allowed)."""
    if obs.current <= limits.min_nodes:
        if obs.current < limits.min_nodes:
            return Decision(limits.min_nodes, f"queue empty: raise to --min {limits.min_nodes}", limits.min_nodes)
        return Decision(obs.current, "queue empty: at --min", limits.min_nodes)
    idle_for = 0.0 if obs.idle_since is None else obs.now - obs.idle_since
    if idle_for < limits.idle_s:
        return Decision(
            obs.current,
            f"hold: queue empty for {idle_for:.0f} s of --idle-s {limits.idle_s:g}",
            limits.min_nodes,
        )
    wait_s = _cooldown_left(obs, limits)
    if wait_s > 0:
        return Decision(obs.current, f"hold: cool-down {wait_s:.0f} s more before scaling in", limits.min_nodes)
    to = "zero" if limits.min_nodes == 0 else f"--min {limits.min_nodes}"
    return Decision(limits.min_nodes, f"scale to {to}: queue empty for {idle_for:.0f} s", limits.min_nodes)


def _cooldown_left(obs: Observation, limits: Limits) -> float:
    if obs.last_change_at is None:
        return 0.0
    return max(0.0, obs.last_change_at + limits.cooldown_s - obs.now)


def _count(value: int | None) -> str:
    return "unknown number of" if value is None else str(value)
