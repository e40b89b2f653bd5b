"""How many whole blocks a block-level method removes for a target sparsity (pure arithmetic, no torch).

The target is a fraction s of the transformer-block parameters; all blocks have the same size, so removing n
blocks gives sparsity n / B. "nearest" picks the n closest to s * B (an exact half rounds down, so the method
never overshoots when two counts are equally close); "floor" and "ceil" never exceed / never fall short.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from twossp_core.errors import InfeasibleTarget

Rounding = Literal["nearest", "floor", "ceil"]


class BlockCountConfig(BaseModel):
    """The options of a method that removes a number of whole blocks (each method names its own subclass)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rounding: Rounding = Field(
        "nearest", description="blocks removed = s x B rounded this way (nearest: an exact half rounds down)"
    )


def blocks_to_remove(num_blocks: int, sparsity: float, rounding: Rounding = "nearest") -> int:
    if not 0.0 < sparsity < 1.0:
        raise InfeasibleTarget(f"sparsity must be strictly between 0 and 1, got {sparsity}")
    exact = sparsity * num_blocks
    if rounding == "floor":
        n = math.floor(exact + 1e-9)
    elif rounding == "ceil":
        n = math.ceil(exact - 1e-9)
    else:
        n = math.ceil(exact - 0.5 - 1e-9)
    if n < 1:
        raise InfeasibleTarget(
            f"sparsity {sparsity} of {num_blocks} blocks rounds ({rounding}) to removing no block; raise the sparsity"
        )
    if n >= num_blocks:
        raise InfeasibleTarget(f"sparsity {sparsity} would remove all {num_blocks} blocks")
    return n
