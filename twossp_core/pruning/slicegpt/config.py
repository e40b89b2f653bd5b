"""Options of SliceGPT (torch-free).

For SliceGPT the requested sparsity is the fraction of the hidden dimension that is sliced away, as in the
SliceGPT paper, not a fraction of parameters; the report gives the achieved parameter sparsity separately.
"""

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class SliceGPTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rotated_residual: ClassVar[bool] = True  # only the compact export can hold a rotated residual stream

    round_to: int = Field(1, ge=1, le=4096, description="round the sliced hidden size to a multiple of this (e.g. 8)")
