"""Fitness of a candidate: KL(dense || pruned) of next-token distributions per token (pure tensor math)."""

from __future__ import annotations

import torch


def kl_sum(dense_logprobs: torch.Tensor, pruned_logits: torch.Tensor) -> float:
    """Sum over positions of KL(p_dense || p_pruned); inputs (..., vocab), float64 accumulation."""
    pruned = torch.log_softmax(pruned_logits.float(), dim=-1)
    dense = dense_logprobs.float()
    return float((dense.exp() * (dense - pruned)).sum(dtype=torch.float64))
