"""Last-token residual states at every block boundary of the dense model (shared by ShortGPT and the
sliding-window method, and cached across a sweep)."""

from __future__ import annotations

from typing import Any

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.progress import Reporter
from twossp_core.runtime.offload import is_offloaded
from twossp_core.runtime.sequential import BatchState, capture_batch, chunks, compute_device, run_blocks, window_budget

CACHE_KEY = "depth.last_token_states"


@torch.no_grad()
def last_token_states(
    adapter: ModelAdapter, windows: torch.Tensor, *, stage: str, reporter: Reporter | None = None
) -> torch.Tensor:
    """(B + 1, windows, hidden) float32: entry [i] is the input of block i, entry [B] the last block's output
    (before the final norm), each at the last position of every window."""
    reporter = reporter or Reporter()
    blocks = adapter.num_blocks
    states = torch.zeros(blocks + 1, windows.shape[0], adapter.config.hidden_size, dtype=torch.float32)
    if is_offloaded(adapter):
        return _states_block_by_block(adapter, windows, states, stage, reporter)
    current = {"row": 0}
    handles = []

    def pre_hook(idx: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            states[idx, current["row"]] = hidden[0, -1].float().cpu()
        return hook

    def post_hook(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        states[blocks, current["row"]] = hidden[0, -1].float().cpu()

    for idx, layer in enumerate(adapter.layers):
        handles.append(layer.register_forward_pre_hook(pre_hook(idx), with_kwargs=True))
    handles.append(adapter.layers[blocks - 1].register_forward_hook(post_hook, with_kwargs=True))
    try:
        for row in range(windows.shape[0]):
            reporter.checkpoint()
            current["row"] = row
            adapter.decoder(input_ids=windows[row : row + 1], use_cache=False)
            reporter.update(stage, (row + 1) / windows.shape[0])
    finally:
        for h in handles:
            h.remove()
    return states


def _states_block_by_block(
    adapter: ModelAdapter, windows: torch.Tensor, states: torch.Tensor, stage: str, reporter: Reporter
) -> torch.Tensor:
    """The same states from block-by-block passes (each block read once per pass, not once per window): every
    window goes through the same block calls, one window per batch, as the whole-model pass above."""
    blocks, count = adapter.num_blocks, windows.shape[0]
    groups = list(chunks(count, 1, window_budget(adapter)))
    device = compute_device(adapter)
    for g, group in enumerate(groups):
        reporter.checkpoint()
        batches = [capture_batch(adapter, windows[s:e].to(device)) for s, e in group]
        rows = [s for s, _ in group]
        for row, batch in zip(rows, batches, strict=True):
            states[0, row] = batch.hidden[0, -1].float()

        def record(idx: int, g: int = g, rows: list[int] = rows, batches: list[BatchState] = batches) -> None:
            for row, batch in zip(rows, batches, strict=True):
                states[idx + 1, row] = batch.hidden[0, -1].float()
            reporter.update(stage, (g + (idx + 1) / blocks) / len(groups))

        run_blocks(adapter, batches, on_block=record)
    return states


def cached_last_token_states(ctx: Any, *, stage: str) -> torch.Tensor:
    """Compute once per dense model and calibration set; later runs of a sweep reuse the tensor."""
    key = (CACHE_KEY, int(ctx.calibration.shape[0]), int(ctx.calibration.shape[1]), ctx.adapter.num_blocks)
    states = ctx.cache.get(key)
    if states is None:
        states = last_token_states(ctx.adapter, ctx.calibration, stage=stage, reporter=ctx.reporter)
        ctx.cache[key] = states
    return states
