"""Options of the 2SSP method (torch-free)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from twossp_core.plan.declarations import MethodMemory
from twossp_core.plan.limits import MAX_WINDOWS


class TwoSSPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    alpha: float = Field(
        1.5, gt=0.0, le=1000.0, description="balance exponent divisor in N_attn = round(B * s^((P_mlp/P_attn)/alpha))"
    )
    num_attention_to_prune: int | None = Field(
        None, ge=0, le=10_000, description="override the balance formula with an explicit attention count"
    )
    round_to: int = Field(
        8, ge=1, le=4096,
        description="kept FFN neurons are a multiple of this (fast matrix shapes); 1 keeps the exact count",
    )
    stage2_windows: int = Field(
        1, ge=1, le=MAX_WINDOWS, description="calibration windows used to rank attention removals"
    )
    stage2_mode: Literal["fast", "naive"] = Field(
        "fast", description="fast reuses the hidden states before each candidate; naive reruns the whole model"
    )
    batch_size: int = Field(1, ge=1, le=MAX_WINDOWS, description="windows per forward pass in stage 1")


def memory_needs(config: TwoSSPConfig, calibration_windows: int) -> MethodMemory:
    """Stage 2 records every block input of its windows at once."""
    return MethodMemory(record_windows=min(int(config.stage2_windows), calibration_windows))
