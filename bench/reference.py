"""A straightforward stage 1, kept only as the benchmark's yardstick for the optimized one.

It is what a direct port of the method does: run the whole causal LM (LM head and logits included) under
`no_grad`, with hooks on every down projection computing the per-window L2 norms.
"""

from __future__ import annotations

from typing import Any

import torch

from twossp_core.models.base import ModelAdapter


@torch.no_grad()
def straightforward_neuron_scores(adapter: ModelAdapter, windows: torch.Tensor) -> list[torch.Tensor]:
    sums = [torch.zeros(adapter.intermediate_size) for _ in range(adapter.num_blocks)]

    def make_hook(idx: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            sums[idx] += args[0].float().square().sum(dim=1).sqrt().sum(dim=0)
        return hook

    handles = [adapter.down_projection(i).register_forward_pre_hook(make_hook(i)) for i in range(adapter.num_blocks)]
    try:
        for window in windows:
            adapter.model(input_ids=window.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
    return [s / windows.shape[0] for s in sums]
