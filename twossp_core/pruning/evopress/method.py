"""EvoPress: evolutionary search over which attention/FFN submodules to drop, scored by KL divergence to the
dense model's next-token distributions on calibration tokens.

The dense block inputs are recorded once (BlockRunner); a candidate runs only from its first removed block on,
with its submodules bypassed. Every selection step draws its windows from all calibration windows, so the dense
block inputs and log-probabilities of all of them are kept in memory (windows x seq_len x (blocks x hidden + vocab)
floats) and shared across a sweep.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch

from twossp_core.errors import InfeasibleTarget
from twossp_core.models.base import ModelAdapter
from twossp_core.pruning.base import PruneContext, PruneOutcome, PruningMethod
from twossp_core.pruning.blockpruner.budget import target_params
from twossp_core.pruning.evopress.config import EvoPressConfig
from twossp_core.pruning.evopress.divergence import kl_sum
from twossp_core.pruning.evopress.search import Genome, default_generations, evolve, plan_counts
from twossp_core.pruning.submodules import delete_emptied_blocks, removal_cost
from twossp_core.runtime.forward import LOGIT_CHUNK, BlockInputs, BlockRunner

STAGE = "evolution"
CACHE_KEY = "evopress.dense_reference"


class DenseReference:
    """Recorded block inputs and dense log-probs of every calibration window."""

    def __init__(self, adapter: ModelAdapter, windows: torch.Tensor) -> None:
        runner = BlockRunner(adapter)
        self.records: list[BlockInputs] = [runner.capture(w.unsqueeze(0)) for w in windows]
        self.logprobs: list[torch.Tensor] = []
        for record in self.records:
            hidden = runner.run_from(record, 0)
            normed = adapter.final_norm(hidden)
            self.logprobs.append(torch.log_softmax(adapter.head(normed).float(), dim=-1)[0])


@torch.no_grad()
def candidate_kl(adapter: ModelAdapter, ref: DenseReference, genome: Genome, windows: Sequence[int]) -> float:
    """Mean per-token KL(dense || candidate) over the given calibration windows."""
    runner = BlockRunner(adapter)
    attn, mlp = genome
    start = min([*attn, *mlp], default=adapter.num_blocks - 1)
    total, tokens = 0.0, 0
    with ExitStack() as stack:
        for idx in attn:
            stack.enter_context(adapter.bypassed("attention", idx))
        for idx in mlp:
            stack.enter_context(adapter.bypassed("mlp", idx))
        for w in windows:
            normed = adapter.final_norm(runner.run_from(ref.records[w], start))[0]
            for s in range(0, normed.shape[0], LOGIT_CHUNK):
                total += kl_sum(ref.logprobs[w][s : s + LOGIT_CHUNK], adapter.head(normed[s : s + LOGIT_CHUNK]))
            tokens += normed.shape[0]
    return total / tokens


class EvoPress(PruningMethod):
    config: EvoPressConfig

    def reference(self, ctx: PruneContext) -> DenseReference:
        key = (CACHE_KEY, *ctx.calibration.shape)
        ref: Any = ctx.cache.get(key)
        if ref is None:
            with torch.no_grad():
                ref = DenseReference(ctx.adapter, ctx.calibration)
            ctx.cache[key] = ref
        return ref

    @torch.no_grad()
    def prune(self, ctx: PruneContext, sparsity: float) -> PruneOutcome:
        cfg, adapter = self.config, ctx.adapter
        if adapter.removed_attention or adapter.removed_mlp:
            raise InfeasibleTarget("evopress starts from a model without removed submodules")
        blocks = adapter.num_blocks
        attn_cost, mlp_cost = removal_cost(adapter, "attention", 0), removal_cost(adapter, "mlp", 0)
        target = target_params(sparsity, adapter.blocks_params())
        counts = plan_counts(blocks, attn_cost, mlp_cost, target)
        if sum(counts) == 0:
            raise InfeasibleTarget(f"sparsity {sparsity} is below the smallest submodule; nothing to remove")
        available, seq_len = int(ctx.calibration.shape[0]), int(ctx.calibration.shape[1])

        def windows_for(tokens: int) -> int:
            return min(available, math.ceil(tokens / seq_len))

        steps = [(windows_for(t), s) for t, s in zip(cfg.selection_tokens, cfg.selection_survivors, strict=True)]
        generations = default_generations(blocks, counts) if cfg.generations is None else cfg.generations
        t0 = time.perf_counter()
        ref = self.reference(ctx)
        t1 = time.perf_counter()

        def fitness(genome: Genome, windows: Sequence[int]) -> float:
            ctx.reporter.checkpoint()
            return candidate_kl(adapter, ref, genome, windows)

        result = evolve(
            blocks=blocks, counts=counts, fitness=fitness, generations=generations, offspring=cfg.offspring,
            initial=(windows_for(cfg.initial_tokens), cfg.initial_candidates), steps=steps, available=available,
            seed=cfg.seed, on_generation=lambda g: ctx.reporter.update(STAGE, g / max(generations, 1)),
        )
        t2 = time.perf_counter()
        for idx in result.best[0]:
            adapter.remove_attention(idx)
        for idx in result.best[1]:
            adapter.remove_mlp(idx)
        attention, mlp, blocks = delete_emptied_blocks(adapter, list(result.best[0]), list(result.best[1]))
        ctx.reporter.update(STAGE, 1.0)
        return PruneOutcome(
            removed_attention=attention,
            removed_mlp=mlp,
            removed_blocks=blocks,
            timings={"reference_s": t1 - t0, "search_s": t2 - t1},
            details={
                "target_params": target,
                "removed_params": counts[0] * attn_cost + counts[1] * mlp_cost,
                "attention_removed": counts[0],
                "mlp_removed": counts[1],
                "kl_divergence": result.fitness,
                "kl_windows": list(result.windows),
                "kl_history": result.history,
                "evaluations": result.evaluations,
                "initial_selection": {
                    "windows": windows_for(cfg.initial_tokens), "candidates": cfg.initial_candidates},
                "selection_steps": [{"windows": w, "survivors": s} for w, s in steps],
                "generations": generations,
                "offspring": cfg.offspring,
                "seed": cfg.seed,
            },
        )
