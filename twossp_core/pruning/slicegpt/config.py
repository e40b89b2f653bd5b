"""Options of SliceGPT (torch-free).

For SliceGPT the requested sparsity is the fraction of the hidden dimension that is sliced away, as in the
SliceGPT paper, not a fraction of parameters; the report gives the achieved parameter sparsity separately.
"""

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from twossp_core.plan.declarations import MethodMemory


class SliceGPTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rotated_residual: ClassVar[bool] = True  # only the compact export can hold a rotated residual stream

    round_to: int = Field(1, ge=1, le=4096, description="round the sliced hidden size to a multiple of this (e.g. 8)")


def memory_needs(config: SliceGPTConfig, calibration_windows: int) -> MethodMemory:
    """Nothing held besides the model; its sparsity is a fraction of the hidden size and its shortcut matrices add
    parameters, so the pruned blocks are not bounded by it."""
    return MethodMemory(record_windows=0, sized_by_sparsity=False)
