"""Options of the `gguf` export format (torch-free)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GGUFOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["f32", "f16", "bf16", "q8_0"] = Field(
        "f16",
        description="weight type of the matrices (norms stay f32); q8_0 stores a matrix whose rows are not a "
        "multiple of 32 values in f16",
    )
    ffn_multiple: int = Field(
        64, ge=1, le=4096,
        description="FFN widths are padded up to a multiple of this with zero neurons (exact: a zero neuron adds "
        "nothing); multiples of 64 keep llama.cpp on its fast matrix kernels; 1: no padding",
    )
