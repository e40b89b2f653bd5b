"""Options of BlockPruner (torch-free)."""

from pydantic import BaseModel, ConfigDict, Field


class BlockPrunerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    windows: int = Field(1, ge=1, description="calibration windows scoring each candidate removal")
