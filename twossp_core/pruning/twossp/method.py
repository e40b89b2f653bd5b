"""The 2SSP method: balance the target, prune FFN neurons (stage 1), then attention modules (stage 2)."""

from __future__ import annotations

import time
from typing import Any

import torch

from twossp_core.pruning.base import PruneContext, PruneOutcome, PruningMethod
from twossp_core.pruning.twossp import stage1, stage2
from twossp_core.pruning.twossp.balance import BalancePlan, plan_balance
from twossp_core.pruning.twossp.config import TwoSSPConfig

SCORES_CACHE_KEY = "2ssp.neuron_scores"


class TwoSSP(PruningMethod):
    config: TwoSSPConfig

    def plan(self, ctx: PruneContext, sparsity: float) -> BalancePlan:
        a = ctx.adapter
        return plan_balance(
            blocks=a.num_blocks,
            sparsity=sparsity,
            mlp_params=a.mlp_params(0),
            attn_params=a.attention_params(0),
            block_params_total=a.blocks_params(),
            intermediate_size=a.intermediate_size,
            alpha=self.config.alpha,
            num_attention=self.config.num_attention_to_prune,
            round_to=self.config.round_to,
        )

    def prune(self, ctx: PruneContext, sparsity: float) -> PruneOutcome:
        plan = self.plan(ctx, sparsity)
        t0 = time.perf_counter()
        stage1.apply_width(ctx.adapter, self.neuron_scores(ctx), plan.kept_neurons)
        t1 = time.perf_counter()
        ctx.reporter.checkpoint()
        removals = self.remove_attention(ctx, plan)
        t2 = time.perf_counter()
        return self.outcome(plan, removals, {"stage1_s": t1 - t0, "stage2_s": t2 - t1}, {})

    # ---- the steps 2SSP's variants share -----------------------------------------------------------------
    def neuron_scores(self, ctx: PruneContext) -> list[torch.Tensor]:
        """Stage 1's scores of the dense model, computed once per context cache (a sweep's sparsities share
        them)."""
        scores = ctx.cache.get(self.scores_key())
        if scores is None:
            scores = stage1.neuron_scores(
                ctx.adapter, ctx.calibration, batch_size=self.config.batch_size, reporter=ctx.reporter
            )
            ctx.cache[self.scores_key()] = scores
        return scores

    def scores_key(self) -> tuple[str, int]:
        """The cache key of stage 1's scores: the batch size is part of it (batches of another size may round
        differently), so a run always uses the scores its own options give."""
        return (SCORES_CACHE_KEY, self.config.batch_size)

    def remove_attention(self, ctx: PruneContext, plan: BalancePlan) -> list[stage2.Removal]:
        """Stage 2: the planned number of attention modules, removed greedily."""
        cfg = self.config
        return stage2.greedy_attention_removal(
            ctx.adapter, ctx.calibration[: cfg.stage2_windows], plan.num_attention, mode=cfg.stage2_mode,
            reporter=ctx.reporter,
        )

    def outcome(
        self, plan: BalancePlan, removals: list[stage2.Removal], timings: dict[str, float], extra: dict[str, Any]
    ) -> PruneOutcome:
        """The outcome of a run that followed `plan`; `extra` adds to the details every variant reports."""
        cfg = self.config
        return PruneOutcome(
            removed_attention=sorted(r.block for r in removals),
            kept_ffn_neurons=plan.kept_neurons,
            timings=timings,
            details={
                "num_attention_removed": plan.num_attention,
                "target_params": plan.target_params,
                "removal_order": [r.block for r in removals],
                "removal_perplexity": [r.perplexity for r in removals],
                "alpha": cfg.alpha,
                "round_to": cfg.round_to,
                "stage2_windows": cfg.stage2_windows,
                "stage2_mode": cfg.stage2_mode,
                **extra,
            },
        )
