"""Stage-1 neuron scores as pure tensor math: L2 norm over tokens, averaged over windows; top-K."""

from __future__ import annotations

import torch


def window_norms(activation: torch.Tensor) -> torch.Tensor:
    """(windows, tokens, neurons) → (neurons,) sum over windows of each neuron's L2 norm over tokens.

    The norm is reduced in float32 whatever the activation dtype, in one pass without a squared copy.
    """
    return torch.linalg.vector_norm(activation, ord=2, dim=1, dtype=torch.float32).sum(dim=0)


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, ascending; ties go to the lower index."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:k].sort().values
