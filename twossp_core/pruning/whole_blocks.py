"""What ShortGPT and the sliding window share: the number of blocks from the sparsity, the choice of which from the
dense model's last-token states at every block boundary (each method's own), then the blocks deleted."""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any, ClassVar

import torch

from twossp_core.pruning.base import PruneContext, PruneOutcome, PruningMethod
from twossp_core.pruning.block_count import BlockCountConfig, blocks_to_remove
from twossp_core.pruning.hidden_states import cached_last_token_states


class WholeBlockMethod(PruningMethod):
    stage: ClassVar[str]  # the progress stage of the choice; its time is reported as `<stage>_s`
    config: BlockCountConfig

    @abstractmethod
    def choose(self, states: torch.Tensor, count: int) -> tuple[list[int], dict[str, Any]]:
        """The `count` blocks to delete (ascending) from the (B + 1, windows, hidden) boundary states, and the
        report's details of the choice."""

    def prune(self, ctx: PruneContext, sparsity: float) -> PruneOutcome:
        adapter = ctx.adapter
        count = blocks_to_remove(adapter.num_blocks, sparsity, self.config.rounding)
        t0 = time.perf_counter()
        removed, details = self.choose(cached_last_token_states(ctx, stage=self.stage), count)
        ctx.reporter.update(self.stage, 1.0)
        t1 = time.perf_counter()
        adapter.remove_blocks(removed)
        return PruneOutcome(
            removed_blocks=removed,
            timings={f"{self.stage}_s": t1 - t0, "remove_s": time.perf_counter() - t1},
            details={
                **details,
                "blocks_removed": count,
                "rounding": self.config.rounding,
                "removal": "layers deleted (config.num_hidden_layers updated; loads without remote code)",
            },
        )
