"""Perplexity over full windows: exp of the mean next-token NLL over all predicted tokens."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.runtime.forward import window_nll
from twossp_core.runtime.offload import is_offloaded


@torch.no_grad()
def perplexity(
    adapter: ModelAdapter,
    windows: torch.Tensor,
    *,
    batch_size: int = 1,
    on_progress: Callable[[float], None] | None = None,
) -> float:
    if is_offloaded(adapter):  # block by block: every block read once per pass, same numbers
        from twossp_core.runtime.sequential import perplexity_by_block

        return perplexity_by_block(adapter, windows, batch_size=batch_size, on_progress=on_progress)
    total, count = 0.0, 0
    n = windows.shape[0]
    for start in range(0, n, batch_size):
        s, c = window_nll(adapter, windows[start : start + batch_size])
        total, count = total + s, count + c
        if on_progress is not None:
            on_progress(min(start + batch_size, n) / n)
    return math.exp(total / count)
