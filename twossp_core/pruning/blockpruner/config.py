"""Options of BlockPruner (torch-free)."""

from pydantic import BaseModel, ConfigDict, Field

from twossp_core.spec_limits import MAX_WINDOWS


class BlockPrunerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    windows: int = Field(1, ge=1, le=MAX_WINDOWS, description="calibration windows scoring each candidate removal")
