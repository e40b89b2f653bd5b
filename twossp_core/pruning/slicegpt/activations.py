"""Gram matrices of the normalized residual stream at every norm input of the dense model (hooks)."""

from __future__ import annotations

from typing import Any

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.progress import Reporter
from twossp_core.pruning.slicegpt.pca import normalized_gram


@torch.no_grad()
def norm_input_grams(
    adapter: ModelAdapter, windows: torch.Tensor, *, stage: str, reporter: Reporter | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """(attention-norm inputs per block, FFN-norm inputs per block, final-norm input), each (d, d) float64."""
    reporter = reporter or Reporter()
    eps = float(adapter.config.rms_norm_eps)
    d = int(adapter.config.hidden_size)
    zeros = lambda: torch.zeros(d, d, dtype=torch.float64, device=windows.device)  # noqa: E731
    attn = [zeros() for _ in range(adapter.num_blocks)]
    mlp = [zeros() for _ in range(adapter.num_blocks)]
    final = [zeros()]
    handles = []

    def hook(target: list[torch.Tensor], idx: int) -> Any:
        def fn(module: Any, args: tuple[Any, ...]) -> None:
            target[idx] += normalized_gram(args[0], eps)
        return fn

    for i, layer in enumerate(adapter.layers):
        handles.append(layer.input_layernorm.register_forward_pre_hook(hook(attn, i)))
        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(hook(mlp, i)))
    handles.append(adapter.decoder.norm.register_forward_pre_hook(hook(final, 0)))
    try:
        for row in range(windows.shape[0]):
            reporter.checkpoint()
            adapter.decoder(input_ids=windows[row : row + 1], use_cache=False)
            reporter.update(stage, (row + 1) / windows.shape[0])
    finally:
        for h in handles:
            h.remove()
    return attn, mlp, final[0]
