"""Options of the sliding-window (consecutive blocks) method (torch-free)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WindowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rounding: Literal["nearest", "floor", "ceil"] = Field(
        "nearest", description="blocks removed = s x B rounded this way (nearest: an exact half rounds down)"
    )
