"""The autoscaler's defaults (`orchestration autoscale`, `launch --autoscale`): its flags override them."""

from __future__ import annotations

from pydantic import BaseModel, Field


class AutoscaleSettings(BaseModel):
    """The autoscaler's defaults (`orchestration autoscale`, `launch --autoscale`): its flags override them."""

    # --- the autoscaler (`orchestration autoscale`, `launch --autoscale`): defaults of its flags ---
    autoscale_batches_per_node: float = Field(
        4.0, gt=0, description="Autoscaler: visible batches (queue messages) that ask for one node."
    )
    autoscale_idle_s: float = Field(
        120.0,
        ge=0,
        description="Autoscaler: seconds the queue stays empty (in flight included) before scaling to --min.",
    )
    autoscale_cooldown_s: float = Field(
        60.0, ge=0, description="Autoscaler: seconds after a size change before the pool may shrink again."
    )
    autoscale_interval_s: float = Field(5.0, gt=0, description="Autoscaler: seconds between decisions.")
