"""Angular distance between the states entering and leaving a run of n blocks (pure tensor math)."""

from __future__ import annotations

import math

import torch


def angular_distances(states: torch.Tensor, n: int) -> torch.Tensor:
    """states: (B + 1, windows, hidden) → (B - n + 1,): mean over windows of arccos(cos(x_l, x_{l+n})) / pi."""
    cos = torch.nn.functional.cosine_similarity(states[:-n].double(), states[n:].double(), dim=-1)
    return (torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).mean(dim=1)


def best_start(distances: torch.Tensor) -> int:
    """The start of the most redundant run (smallest distance; ties → earliest)."""
    return int(torch.argsort(distances, stable=True)[0])
