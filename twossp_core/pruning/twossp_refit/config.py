"""Options of 2SSP with a least-squares refit of the down projections (torch-free)."""

from typing import Literal

from pydantic import Field, model_validator

from twossp_core.pruning.twossp.config import TwoSSPConfig


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
    def _check_sequential(self) -> "TwoSSPRefitConfig":
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
