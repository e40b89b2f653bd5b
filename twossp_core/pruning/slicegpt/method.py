"""SliceGPT: PCA of the normalized residual stream at every norm input, each computed on the signals of the
model already sliced before it (SliceGPT's sequential recipe), then rotate every block into those bases and
slice the hidden dimension.

The requested sparsity is the fraction of the hidden dimension removed (the SliceGPT convention); the achieved
fraction of block parameters is lower because every block gains two (k x k) shortcut matrices. Llama family only.
"""

from __future__ import annotations

import time

from twossp_core.errors import InfeasibleTarget, UnsupportedModel
from twossp_core.pruning.base import PruneContext, PruneOutcome, PruningMethod
from twossp_core.pruning.slicegpt.config import SliceGPTConfig
from twossp_core.pruning.slicegpt.pca import sliced_size
from twossp_core.pruning.slicegpt.rotate import llama_like, rotate_and_slice
from twossp_core.pruning.slicegpt.sequential import sequential_bases

STAGE = "pca"
SPARSITY_MEANING = (
    "slicegpt: sparsity_target is the fraction of the hidden dimension sliced away; sparsity_achieved is the "
    "fraction of transformer-block parameters removed (shortcut matrices included)"
)


class SliceGPT(PruningMethod):
    config: SliceGPTConfig

    def prune(self, ctx: PruneContext, sparsity: float) -> PruneOutcome:
        adapter = ctx.adapter
        if not llama_like(adapter):
            raise UnsupportedModel(
                f"slicegpt supports the llama family only (model_type 'llama'); got "
                f"{getattr(adapter.config, 'model_type', None)!r}"
            )
        if adapter.structure():
            raise InfeasibleTarget("slicegpt needs a dense model (this one already has removed submodules)")
        hidden = int(adapter.config.hidden_size)
        kept = sliced_size(hidden, sparsity, self.config.round_to)
        if kept >= hidden:
            raise InfeasibleTarget(f"slicing {sparsity} of hidden size {hidden} keeps every dimension")
        t0 = time.perf_counter()
        attn, mlp, final = sequential_bases(adapter, ctx.calibration, kept, stage=STAGE, reporter=ctx.reporter)
        t1 = time.perf_counter()
        ctx.reporter.checkpoint()
        rotate_and_slice(adapter, attn, mlp, final, kept)
        ctx.reporter.update("rotate", 1.0)
        return PruneOutcome(
            timings={"pca_s": t1 - t0, "rotate_s": time.perf_counter() - t1},
            details={
                "sparsity_meaning": SPARSITY_MEANING,
                "hidden_fraction_sliced": 1.0 - kept / hidden,
                "hidden_size_before": hidden,
                "hidden_size_after": kept,
                "shortcut_params_per_block": 2 * kept * kept,
                "embeddings_untied": True,
            },
        )
