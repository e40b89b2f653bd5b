"""BlockPruner: each round, try removing every remaining attention and FFN submodule, measure the calibration
perplexity, and remove the one that hurts least; stop at the parameter target. Blocks that lose both submodules
are deleted at the end.

Candidates in block i reuse the recorded input of block i (BlockRunner), so a trial runs only blocks i..B.

The greedy order does not depend on the target (only the stopping rule does), so the removals of a lower sparsity
are the first removals of a higher one. Within one context cache (a sweep's sparsities) the order found so far is
kept and replayed: a later sparsity re-applies the recorded removals while its target wants them and searches only
beyond them. The replayed removals are the ones the search would choose again (the same model, windows and
arithmetic), so the result is the same as a search from scratch, in the time of the highest sparsity alone.
"""

from __future__ import annotations

import math
import time

import torch

from twossp_core.models.base import ModelAdapter
from twossp_core.pruning.base import PruneContext, PruneOutcome, PruningMethod
from twossp_core.pruning.blockpruner.budget import keep_removing, target_params
from twossp_core.pruning.blockpruner.config import BlockPrunerConfig
from twossp_core.pruning.submodules import delete_emptied_blocks, remaining, removal_cost, remove
from twossp_core.runtime.forward import BlockRunner

STAGE = "greedy_removal"
ORDER_CACHE_KEY = "blockpruner.removal_order"


class BlockPruner(PruningMethod):
    config: BlockPrunerConfig

    @torch.no_grad()
    def prune(self, ctx: PruneContext, sparsity: float) -> PruneOutcome:
        adapter = ctx.adapter
        windows = ctx.calibration[: self.config.windows]
        target = target_params(sparsity, adapter.blocks_params())
        runner = BlockRunner(adapter)
        t0 = time.perf_counter()
        removed_params = 0
        order: list[dict[str, object]] = []
        # the order found so far for these windows (a sweep's earlier, lower sparsities), shared through ctx.cache
        known: list[dict[str, object]] = ctx.cache.setdefault(f"{ORDER_CACHE_KEY}.{windows.shape[0]}", [])
        replayed = 0
        while True:
            candidates = remaining(adapter)
            costs = {c: removal_cost(adapter, *c) for c in candidates}
            if not keep_removing(removed_params, target, min(costs.values(), default=None)):
                break
            if len(order) < len(known):
                step = known[len(order)]
                kind, idx = str(step["kind"]), int(step["block"])  # type: ignore[call-overload]
                replayed += 1
            else:
                step, (kind, idx) = self._search(ctx, adapter, runner, windows, candidates)
                known.append(step)
            ctx.reporter.checkpoint()
            remove(adapter, kind, idx)  # type: ignore[arg-type]
            removed_params += costs[(kind, idx)]
            order.append(step)
            ctx.reporter.update(STAGE, min(removed_params / max(target, 1), 1.0))
        ctx.reporter.update(STAGE, 1.0)
        attention, mlp, blocks = delete_emptied_blocks(adapter, adapter.removed_attention, adapter.removed_mlp)
        return PruneOutcome(
            removed_attention=attention,
            removed_mlp=mlp,
            removed_blocks=blocks,
            timings={"greedy_s": time.perf_counter() - t0},
            details={"target_params": target, "removed_params": removed_params, "removal_order": order,
                     "windows": int(windows.shape[0]), "replayed_removals": replayed},
        )

    def _search(
        self, ctx: PruneContext, adapter: ModelAdapter, runner: BlockRunner, windows: torch.Tensor,
        candidates: list[tuple[str, int]],
    ) -> tuple[dict[str, object], tuple[str, int]]:
        """One greedy round: the candidate whose removal gives the lowest calibration perplexity."""
        records = [runner.capture(w.unsqueeze(0)) for w in windows]
        best: tuple[float, tuple[str, int]] | None = None
        for kind, idx in candidates:
            ctx.reporter.checkpoint()
            nll, tokens = 0.0, 0
            with adapter.bypassed(kind, idx):
                for record in records:
                    s, n = runner.nll_from(record, idx)
                    nll, tokens = nll + s, tokens + n
            if best is None or nll / tokens < best[0]:
                best = (nll / tokens, (kind, idx))
        assert best is not None
        kind, idx = best[1]
        return {"kind": kind, "block": idx, "perplexity": math.exp(best[0])}, (kind, idx)
