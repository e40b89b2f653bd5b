"""Stage 1 on an offloaded model: the same neuron scores as stage1.neuron_scores, computed block by block.

Every block is read once per pass (runtime/sequential.py) instead of once per batch; the per-block sums add the
same batch norms in the same batch order, so the scores are bit-identical to the in-memory ones.
"""

from __future__ import annotations

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.progress import Reporter
from twossp_core.pruning.twossp.score_hooks import install_score_hooks
from twossp_core.runtime.sequential import capture_batch, chunks, compute_device, run_blocks, window_budget


@torch.no_grad()
def neuron_scores_by_block(
    adapter: ModelAdapter, windows: torch.Tensor, *, batch_size: int, reporter: Reporter, stage: str
) -> list[torch.Tensor]:
    device = compute_device(adapter)
    sums, handles = install_score_hooks(adapter, device)
    hooked = [i for i in range(adapter.num_blocks) if not adapter.mlp_removed(i)]
    last = hooked[-1] if hooked else -1
    n = windows.shape[0]
    groups = list(chunks(n, batch_size, window_budget(adapter)))
    try:
        with torch.inference_mode():
            for g, group in enumerate(groups):
                reporter.checkpoint()
                states = [capture_batch(adapter, windows[s:e].to(device)) for s, e in group]

                def progress(idx: int, g: int = g) -> None:
                    reporter.checkpoint()
                    reporter.update(stage, (g + (idx + 1) / max(last + 1, 1)) / len(groups))

                run_blocks(adapter, states, last=last, on_block=progress)
    finally:
        for h in handles:
            h.remove()
    return [s / windows.shape[0] for s in sums]
