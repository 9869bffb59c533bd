"""What reports add to the measured figures (cost)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ReportSettings(BaseModel):
    """What reports add to the measured figures (cost)."""

    # --- reports -------------------------------------------------------------------------
    price_per_node_hour: float | None = Field(
        None, ge=0, description="Price of one node for one hour, for the cost figures of `orchestration report`."
    )
