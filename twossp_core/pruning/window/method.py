"""Sliding window: delete the n consecutive blocks whose entry and exit states are most similar."""

from __future__ import annotations

import time

from twossp_core.pruning.base import PruneContext, PruneOutcome, PruningMethod
from twossp_core.pruning.block_count import blocks_to_remove
from twossp_core.pruning.hidden_states import cached_last_token_states
from twossp_core.pruning.window.config import WindowConfig
from twossp_core.pruning.window.distance import angular_distances, best_start

STAGE = "distances"


class SlidingWindow(PruningMethod):
    name = "window"
    config: WindowConfig

    def prune(self, ctx: PruneContext, sparsity: float) -> PruneOutcome:
        adapter = ctx.adapter
        count = blocks_to_remove(adapter.num_blocks, sparsity, self.config.rounding)
        t0 = time.perf_counter()
        distances = angular_distances(cached_last_token_states(ctx, stage=STAGE), count)
        start = best_start(distances)
        ctx.reporter.update(STAGE, 1.0)
        removed = list(range(start, start + count))
        t1 = time.perf_counter()
        adapter.remove_blocks(removed)
        return PruneOutcome(
            removed_blocks=removed,
            timings={"distances_s": t1 - t0, "remove_s": time.perf_counter() - t1},
            details={
                "angular_distance_by_start": [float(x) for x in distances],
                "window_start": start,
                "blocks_removed": count,
                "rounding": self.config.rounding,
                "removal": "layers deleted (config.num_hidden_layers updated; loads without remote code)",
            },
        )
