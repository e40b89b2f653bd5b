"""ShortGPT: score every block's influence on the dense model, physically delete the least influential."""

from __future__ import annotations

import time

from twossp_core.pruning.base import PruneContext, PruneOutcome, PruningMethod
from twossp_core.pruning.block_count import blocks_to_remove
from twossp_core.pruning.hidden_states import cached_last_token_states
from twossp_core.pruning.shortgpt.config import ShortGPTConfig
from twossp_core.pruning.shortgpt.influence import block_influence, least_influential

STAGE = "influence"


class ShortGPT(PruningMethod):
    name = "shortgpt"
    config: ShortGPTConfig

    def prune(self, ctx: PruneContext, sparsity: float) -> PruneOutcome:
        adapter = ctx.adapter
        count = blocks_to_remove(adapter.num_blocks, sparsity, self.config.rounding)
        t0 = time.perf_counter()
        influence = block_influence(cached_last_token_states(ctx, stage=STAGE))
        removed = least_influential(influence, count)
        ctx.reporter.update(STAGE, 1.0)
        t1 = time.perf_counter()
        adapter.remove_blocks(removed)
        return PruneOutcome(
            removed_blocks=removed,
            timings={"influence_s": t1 - t0, "remove_s": time.perf_counter() - t1},
            details={
                "block_influence": [float(x) for x in influence],
                "blocks_removed": count,
                "rounding": self.config.rounding,
                "removal": "layers deleted (config.num_hidden_layers updated; loads without remote code)",
            },
        )
