"""Options of 2SSP with a least-squares refit of the down projections (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from twossp_core.plan.declarations import MethodMemory
from twossp_core.pruning.twossp.config import TwoSSPConfig

if TYPE_CHECKING:
    from twossp_core.plan.shape import ModelShape

F64 = 8  # the refit's statistics are float64


class TwoSSPRefitConfig(TwoSSPConfig):
    """2SSP's options (same defaults) plus the refit's; unknown keys are refused (extra="forbid" is inherited)."""

    selection: Literal["reconstruction", "norm"] = Field(
        "reconstruction",
        description="sequential inputs only. reconstruction: each block keeps the K neurons from which a "
        "least-squares refit best reproduces the dense FFN's output on the pruned model's input (greedy backward "
        "elimination in the refit pass); norm: stage 1's neurons (2ssp's). The number K is 2ssp's either way",
    )
    shrinkage: Literal["cross-validated", "none"] = Field(
        "cross-validated",
        description="sequential inputs only. cross-validated: each block's step from the sliced down projection to "
        "its refit is scaled by the alpha in [0, 1] that best predicts held-out calibration windows (fit on the "
        "even windows, scored on the odd ones, and the reverse); none: the whole refit",
    )
    ridge: float = Field(
        1e-3, ge=0.0,
        description="ridge strength: lambda = ridge x mean diagonal of A_K^T A_K, shrinking towards the sliced weights",
    )
    refit_inputs: Literal["sequential", "dense"] = Field(
        "sequential",
        description="sequential: block by block on the activations of the model already pruned and refit before "
        "the block; dense: on the dense model's activations (one pass, no copy of the dense blocks)",
    )
    refit_target: Literal["residual", "ffn"] = Field(
        "residual",
        description="sequential inputs only. residual: the FFN output that makes each block's output equal the "
        "dense block's; ffn: the dense FFN's output on the same input (families with a norm after the FFN use ffn)",
    )
    stage2_on_refit: bool = Field(
        False,
        description="false: stage 2 decides on the sliced model, as in 2ssp (the same attention modules), and the "
        "refit follows; true: stage 2 runs on the refit model (its decisions may differ from 2ssp's: better on the "
        "calibration text, worse on other text, docs/methods.md); with sequential inputs the refit is then repeated "
        "on the final structure",
    )
    stage2_holdout: bool = Field(
        False,
        description="sequential inputs only: stage 2's windows (the first stage2_windows calibration windows) are "
        "left out of the refit's statistics, so stage 2 judges each removal on tokens the refit was not fit to",
    )

    @model_validator(mode="after")
    def _check_sequential(self) -> TwoSSPRefitConfig:
        if self.stage2_holdout and self.refit_inputs != "sequential":
            raise ValueError("stage2_holdout needs refit_inputs=sequential")
        if self.refit_inputs == "dense":  # the dense-input refit keeps stage 1's neurons and the whole refit
            sequential_only = (("selection", "reconstruction", "norm"), ("shrinkage", "cross-validated", "none"))
            for name, value, plain in sequential_only:
                if getattr(self, name) == value:
                    if name in self.model_fields_set:
                        raise ValueError(f"{name}={value} needs refit_inputs=sequential")
                    setattr(self, name, plain)
        return self


@dataclass(frozen=True)
class RefitMemory(MethodMemory):
    """2ssp-refit's states besides stage 2's records (upper bounds: K is at most the FFN width). Sequential inputs:
    the windows' hidden states at a block boundary (pruned and dense paths, the block's outputs, one block's
    down-projection inputs), one block's full-width statistics (two folds) and the neuron selection's inverse.
    Dense inputs: every block's statistics at once."""

    sequential_windows: int = 0
    every_block_statistics: bool = False

    def state_bytes(self, shape: ModelShape, item: int, seq_len: int) -> int:
        states = self.sequential_windows * seq_len * (3 * shape.hidden + shape.intermediate) * item
        if self.sequential_windows:
            states += shape.intermediate * (4 * shape.intermediate + 4 * shape.hidden) * F64
        if self.every_block_statistics:
            states += shape.blocks * shape.intermediate * (shape.intermediate + shape.hidden) * F64
        return states


def memory_needs(config: TwoSSPRefitConfig, calibration_windows: int) -> RefitMemory:
    """Stage 2's records, and the refit's states: with sequential inputs beside a copy of the dense blocks."""
    dense = config.refit_inputs == "dense"
    refusal = ("2ssp-refit with refit_inputs=dense cannot run block by block (it holds every block's statistics at "
               "once); the default sequential refit can")
    return RefitMemory(
        record_windows=min(int(config.stage2_windows), calibration_windows), dense_blocks=not dense,
        block_mode_refusal=refusal if dense else None, sequential_windows=0 if dense else calibration_windows,
        every_block_statistics=dense,
    )
