"""Stage 1's scoring hooks: each block's down projection adds the norms of its input to the block's neuron sums."""

from __future__ import annotations

from typing import Any

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.pruning.twossp.scores import window_norms
from twossp_core.runtime.forward import StopForward


def install_score_hooks(adapter: ModelAdapter, device: Any) -> tuple[list[torch.Tensor], list[Any]]:
    """Per-block sums of the down projections' input norms, filled by forward pre-hooks (returned with their
    handles, which the caller removes); the last scored block stops the forward: nothing after it counts."""
    sums = [torch.zeros(adapter.intermediate_size, dtype=torch.float32, device=device)
            for _ in range(adapter.num_blocks)]
    hooked = [i for i in range(adapter.num_blocks) if not adapter.mlp_removed(i)]
    last = hooked[-1] if hooked else -1

    def make_hook(idx: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            sums[idx] += window_norms(args[0]).to(sums[idx].device)  # multi-device: from the block's device
            if idx == last:
                raise StopForward
        return hook

    handles = [adapter.down_projection(idx).register_forward_pre_hook(make_hook(idx)) for idx in hooked]
    return sums, handles
