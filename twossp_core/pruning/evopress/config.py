"""Options of EvoPress (torch-free)."""

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EvoPressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generations: int = Field(50, ge=0, description="generations of mutation + selection")
    offspring: int = Field(16, ge=1, description="offspring mutated from the parent every generation")
    seed: int = Field(0, description="random seed: the search is deterministic for a seed")
    selection_windows: list[int] = Field(
        default_factory=lambda: [1, 2, 4],
        description="token budget (calibration windows) of each selection step; must grow",
    )
    selection_survivors: list[int] = Field(
        default_factory=lambda: [4, 2, 1], description="candidates kept after each selection step; the last is 1"
    )

    @model_validator(mode="after")
    def _check_steps(self) -> "EvoPressConfig":
        w, s = self.selection_windows, self.selection_survivors
        if not w or len(w) != len(s):
            raise ValueError("selection_windows and selection_survivors must be non-empty and of equal length")
        if any(x < 1 for x in w + s) or any(a > b for a, b in zip(w, w[1:], strict=False)):
            raise ValueError("selection_windows must be positive and non-decreasing; survivors positive")
        if any(a < b for a, b in zip(s, s[1:], strict=False)) or s[-1] != 1:
            raise ValueError("selection_survivors must be non-increasing and end with 1")
        return self
