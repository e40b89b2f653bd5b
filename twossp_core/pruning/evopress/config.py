"""Options of EvoPress (torch-free). The defaults are the authors' depth-pruning recipe (Sieberling et al. 2024):
32 offspring per generation, an initial population picked from 64 random candidates on 2,048 tokens, selection on
2,048 then 32,768 tokens keeping 2 then 1, and k(n-k)/1.5 generations."""

from pydantic import BaseModel, ConfigDict, Field, model_validator

from twossp_core.plan.declarations import MethodMemory

MAX_GENERATIONS = 100_000
MAX_TOKENS = 10_000_000


class EvoPressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    generations: int | None = Field(
        None, ge=0, le=MAX_GENERATIONS,
        description="generations of mutation + selection; default: the number of single swaps between a "
        "removed and a kept module of the same kind, divided by 1.5 (the authors' k(n-k)/1.5)",
    )
    offspring: int = Field(32, ge=1, le=1024, description="offspring mutated from the parent every generation")
    initial_candidates: int = Field(
        64, ge=1, le=4096, description="random candidates the first parent is selected from"
    )
    initial_tokens: int = Field(
        2048, ge=1, le=MAX_TOKENS, description="calibration tokens that select the first parent"
    )
    selection_tokens: list[int] = Field(
        default_factory=lambda: [2048, 32768], max_length=8,
        description="calibration tokens of each selection step (whole windows, drawn at random, at least one); "
        "must not decrease",
    )
    selection_survivors: list[int] = Field(
        default_factory=lambda: [2, 1], max_length=8,
        description="candidates kept after each selection step; the last is 1",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random seed: the search is deterministic for a seed")

    @model_validator(mode="after")
    def _check_steps(self) -> "EvoPressConfig":
        t, s = self.selection_tokens, self.selection_survivors
        if not t or len(t) != len(s):
            raise ValueError("selection_tokens and selection_survivors must be non-empty and of equal length")
        if any(x > MAX_TOKENS for x in t):
            raise ValueError(f"selection_tokens are at most {MAX_TOKENS:,} each")
        if any(x < 1 for x in t + s) or any(a > b for a, b in zip(t, t[1:], strict=False)):
            raise ValueError("selection_tokens must be positive and non-decreasing; survivors positive")
        if any(a < b for a, b in zip(s, s[1:], strict=False)) or s[-1] != 1:
            raise ValueError("selection_survivors must be non-increasing and end with 1")
        return self


def memory_needs(config: EvoPressConfig, calibration_windows: int) -> MethodMemory:
    """The search records every block input of every calibration window at once."""
    return MethodMemory(record_windows=calibration_windows)
