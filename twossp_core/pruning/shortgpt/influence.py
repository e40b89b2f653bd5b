"""Block influence (pure tensor math): BI_i = 1 - mean over windows of cos(input of block i, its output)."""

from __future__ import annotations

import torch


def block_influence(states: torch.Tensor) -> torch.Tensor:
    """states: (B + 1, windows, hidden) boundary states → (B,) influence of every block."""
    cos = torch.nn.functional.cosine_similarity(states[:-1].double(), states[1:].double(), dim=-1)
    return 1.0 - cos.mean(dim=1)


def least_influential(influence: torch.Tensor, count: int) -> list[int]:
    """Indices of the `count` smallest influences (ties → lower index), ascending."""
    order = torch.argsort(influence, stable=True)
    return sorted(int(i) for i in order[:count])
