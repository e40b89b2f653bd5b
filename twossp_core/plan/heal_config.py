"""The options of a heal (torch-free: the request schema and the API validate them)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from twossp_core.errors import InvalidSpec
from twossp_core.plan.limits import MAX_SEED, MAX_SEQ_LEN, MAX_WINDOWS
from twossp_core.plan.sources import DataSource

MAX_STEPS = 10_000_000
MAX_TOKENS = 10**13

# The default peak learning rate by the dense model's size (docs/heal.md, "Learning rate and model size"): SMALL_LR up
# to SMALL_MODEL parameters, where it was measured best on our two small models; above, falling as a power of the
# size through REAL_LR at REAL_MODEL (SmolLM2-135M-Instruct, measured best of 3e-3, 1e-3, 3e-4 and 1e-4), never
# below MIN_LR. LoRA trains adapters that start at zero: LORA_FACTOR times the full rate, at most SMALL_LR.
SMALL_LR, SMALL_MODEL = 3e-3, 2_500_000
REAL_LR, REAL_MODEL = 3e-4, 134_515_008
MIN_LR = 1e-5
LORA_FACTOR = 10.0


def default_lr(parameters: int, params: str = "full") -> float:
    """The default peak learning rate of a heal of a model that had `parameters` parameters before pruning."""
    if parameters <= SMALL_MODEL:
        full = SMALL_LR
    else:
        slope = math.log(REAL_LR / SMALL_LR) / math.log(REAL_MODEL / SMALL_MODEL)
        full = max(MIN_LR, SMALL_LR * (parameters / SMALL_MODEL) ** slope)
    rate = min(SMALL_LR, full * LORA_FACTOR) if params == "lora" else full
    return float(f"{rate:.2g}")  # a figure a user can type back


def _parse_source(text: str, field: str) -> None:
    try:
        DataSource.parse(text)
    except InvalidSpec as exc:  # the request's field it came from (a heal is the request's `heal`)
        raise exc.with_field(field) from None


class HealConfig(BaseModel):
    """A short training run of the pruned model (student), by default distilled from the dense model (teacher).

    The defaults heal our two real models (0.26 M and 2 M parameters) within a few minutes on 2 CPU cores;
    docs/heal.md gives the settings for GPUs and 7B models.
    """

    model_config = ConfigDict(extra="forbid")

    loss: Literal["kd", "lm"] = Field(
        "kd", description="kd: KL divergence to the dense model's next-token distribution at `temperature`; "
        "lm: next-token cross-entropy on the text (no teacher)")
    steps: int = Field(200, ge=1, le=MAX_STEPS, description="optimizer steps (ignored when `tokens` is set)")
    tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="token budget instead of steps: "
                               "steps = ceil(tokens / (batch_size x seq_len))")
    batch_size: int = Field(8, ge=1, le=MAX_WINDOWS, description="windows per optimizer step")
    micro_batch_size: int | None = Field(None, ge=1, le=MAX_WINDOWS, description="windows per forward pass (gradient "
                                         "accumulation); default batch_size")
    seq_len: int | None = Field(None, ge=8, le=MAX_SEQ_LEN,
                                description="training window length; default the job's seq_len")
    lr: float | None = Field(
        None, gt=0.0, le=1.0, description="peak learning rate; null: chosen from the size of the model before pruning "
        "(3e-3 up to 2.5 M parameters, 3e-4 at 135 M, falling with size to at least 1e-5; 10x that, at most 3e-3, "
        "for lora); the report records the rate used")
    schedule: Literal["onecycle", "cosine", "constant"] = Field(
        "onecycle", description="onecycle: linear warm-up to lr over warmup of the steps, then cosine to "
        "lr x final_lr_ratio; cosine: the same without warm-up; constant")
    warmup: float = Field(0.05, ge=0.0, lt=1.0, description="fraction of the steps spent warming up (onecycle)")
    final_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="last learning rate / lr")
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    grad_clip: float | None = Field(1.0, gt=0.0, description="clip the global gradient norm (null: no clip)")
    temperature: float = Field(1.0, gt=0.0, le=100.0, description="kd: softmax temperature of teacher and student")
    params: Literal["full", "lora"] = Field(
        "full", description="full: train every remaining parameter; lora: low-rank adapters through peft, "
        "merged back into the weights at the end")
    lora_rank: int = Field(16, ge=1, le=4096)
    lora_alpha: float = Field(32.0, gt=0.0)
    lora_targets: list[str] | None = Field(
        None, description="module names (suffixes) to adapt; default every linear layer inside the blocks")
    gradient_checkpointing: bool = Field(False, description="recompute block activations in the backward pass "
                                         "(less memory, slower)")
    data: list[str] | None = Field(None, description="training text sources (SRC spelling); default the "
                                   "job's calibration sources")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="default the job's seed")
    curve_points: int = Field(100, ge=2, le=10_000, description="points kept of the loss curve in the report")
    control: bool | None = Field(
        None, description="also heal a copy of the dense model with the same settings and seed, and report the "
        "healed model against it (`dense_healed`) on every evaluation set; null: on in sweeps (one control per "
        "sweep, shared by its runs), off in a single prune")

    @field_validator("data")
    @classmethod
    def _parse_data(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("data needs at least one source (or null for the calibration sources)")
            for index, item in enumerate(value):
                _parse_source(item, f"heal.data.{index}")
        return value

    @model_validator(mode="after")
    def _check(self) -> HealConfig:
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) exceeds batch_size ({self.batch_size})")
        if self.params == "lora" and self.lora_targets is not None and not self.lora_targets:
            raise ValueError("lora_targets must name at least one module (or be null for every linear layer)")
        return self

    def for_model(self, parameters: int) -> HealConfig:
        """These options with the learning rate set: the request's, else default_lr for a model that had
        `parameters` parameters before pruning (the same for a heal and its control)."""
        if self.lr is not None:
            return self
        return self.model_copy(update={"lr": default_lr(parameters, self.params)})

    def total_steps(self, seq_len: int) -> int:
        """Optimizer steps of one heal with windows of `seq_len` tokens."""
        if self.tokens is None:
            return self.steps
        per_step = self.batch_size * seq_len
        return max(1, -(-self.tokens // per_step))

    def planned_steps(self, seq_len: int, runs: int = 1) -> int:
        """Optimizer steps of a job that heals `runs` pruned models (a sweep: one per method and sparsity), the
        control's heal of the dense model included (once per job, shared by its runs)."""
        return self.total_steps(seq_len) * (runs + (1 if self.control else 0))
