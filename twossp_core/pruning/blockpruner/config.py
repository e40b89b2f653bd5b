"""Options of BlockPruner (torch-free)."""

from pydantic import BaseModel, ConfigDict, Field

from twossp_core.plan.declarations import MethodMemory
from twossp_core.plan.limits import MAX_WINDOWS


class BlockPrunerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    windows: int = Field(1, ge=1, le=MAX_WINDOWS, description="calibration windows scoring each candidate removal")


def memory_needs(config: BlockPrunerConfig, calibration_windows: int) -> MethodMemory:
    """Each candidate removal is scored on `windows` windows whose every block input is recorded."""
    return MethodMemory(record_windows=int(config.windows))
