"""PCA bases of normalized activations (pure tensor math)."""

from __future__ import annotations

import torch


def normalized_gram(hidden: torch.Tensor, eps: float) -> torch.Tensor:
    """X^T X (float64) of the RMS-normalized rows of hidden (..., d): what the following linears see."""
    x = hidden.reshape(-1, hidden.shape[-1]).double()
    x = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)
    return x.T @ x


def principal_basis(gram: torch.Tensor) -> torch.Tensor:
    """Orthogonal (d, d) matrix whose columns are eigenvectors of gram, by decreasing eigenvalue."""
    values, vectors = torch.linalg.eigh(gram.double())
    order = torch.argsort(values, descending=True, stable=True)
    return vectors[:, order]


def sliced_size(hidden: int, fraction: float, round_to: int = 1) -> int:
    """Hidden size kept when slicing `fraction` of it away, rounded to a multiple of round_to (at least one)."""
    kept = round(hidden * (1.0 - fraction) / round_to) * round_to
    return max(round_to, min(hidden, kept))
