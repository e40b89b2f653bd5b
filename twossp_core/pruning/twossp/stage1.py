"""Stage 1 (width): score every FFN neuron on the dense model, keep the top-K in every block.

Hooks on each block's down projection accumulate the per-window L2 norms on the fly (float32), so no
activation is stored, no logits are computed, and the pass stops as soon as the last block's down
projection has shown its input: the rest of that block, the final norm and the LM head never run.
"""

from __future__ import annotations

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.progress import Reporter
from twossp_core.pruning.twossp.score_hooks import install_score_hooks
from twossp_core.pruning.twossp.scores import top_k
from twossp_core.runtime.forward import StopForward
from twossp_core.runtime.offload import editing_block, is_offloaded

STAGE = "stage1"


@torch.no_grad()
def neuron_scores(
    adapter: ModelAdapter, windows: torch.Tensor, *, batch_size: int = 1, reporter: Reporter | None = None
) -> list[torch.Tensor]:
    """Per block: (intermediate,) mean over windows of each neuron's activation L2 norm over tokens."""
    reporter = reporter or Reporter()
    if is_offloaded(adapter):
        from twossp_core.pruning.twossp.stage1_by_block import neuron_scores_by_block

        return neuron_scores_by_block(adapter, windows, batch_size=batch_size, reporter=reporter, stage=STAGE)
    sums, handles = install_score_hooks(adapter, windows.device)
    try:
        run_windows(adapter, windows, batch_size, reporter, STAGE)
    finally:
        for h in handles:
            h.remove()
    return [s / windows.shape[0] for s in sums]


def apply_width(adapter: ModelAdapter, scores: list[torch.Tensor], kept: int) -> None:
    """Physically keep the `kept` best neurons of every block's FFN."""
    for idx, block_scores in enumerate(scores):
        with editing_block(adapter, idx):
            adapter.slice_ffn(idx, top_k(block_scores, kept))
    adapter.set_intermediate_size(kept)


def run_windows(adapter: ModelAdapter, windows: torch.Tensor, batch_size: int, reporter: Reporter, stage: str) -> None:
    """Run the decoder over the windows in batches for the hooks installed on it (a hook may stop a forward
    early with StopForward), with a cancel checkpoint and a progress update per batch."""
    n = windows.shape[0]
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            reporter.checkpoint()
            try:
                adapter.decoder(input_ids=windows[start : start + batch_size], use_cache=False)
            except StopForward:
                pass
            reporter.update(stage, min(start + batch_size, n) / n)
