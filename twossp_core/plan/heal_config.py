"""The options of a heal (torch-free: the request schema and the API validate them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from twossp_core.errors import InvalidSpec
from twossp_core.plan.limits import MAX_SEED, MAX_SEQ_LEN, MAX_WINDOWS
from twossp_core.plan.sources import DataSource

MAX_STEPS = 10_000_000
MAX_TOKENS = 10**13


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
    lr: float = Field(3e-3, gt=0.0, le=1.0, description="peak learning rate")
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
