"""What every pruning method receives and returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel

from twossp_core.models.base import ModelAdapter
from twossp_core.progress import Reporter


@dataclass
class PruneContext:
    """The model (through its adapter), calibration windows already on the model's device, and plumbing.

    `cache` lets a sweep share statistics of the dense model between runs (keys are method-defined).
    """

    adapter: ModelAdapter
    calibration: torch.Tensor
    reporter: Reporter = field(default_factory=Reporter)
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruneOutcome:
    removed_attention: list[int] = field(default_factory=list)
    removed_mlp: list[int] = field(default_factory=list)
    removed_blocks: list[int] = field(default_factory=list)
    kept_ffn_neurons: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class PruningMethod(ABC):
    """A pruning method; its name is its key in the method registry (twossp_core/plan/methods.py)."""

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    @abstractmethod
    def prune(self, ctx: PruneContext, sparsity: float) -> PruneOutcome:
        """Prune ctx.adapter.model in place towards `sparsity` of the transformer-block parameters."""
