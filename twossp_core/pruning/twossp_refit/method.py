"""2SSP + refit: balance, stage 1, a least-squares refit of every sliced down projection, stage 2."""

from __future__ import annotations

import time
from typing import Any

import torch

from twossp_core.pruning.base import PruneContext, PruneOutcome
from twossp_core.pruning.twossp import stage1
from twossp_core.pruning.twossp.method import TwoSSP
from twossp_core.pruning.twossp.scores import top_k
from twossp_core.pruning.twossp_refit import refit
from twossp_core.pruning.twossp_refit.config import TwoSSPRefitConfig
from twossp_core.pruning.twossp_refit.sequential import (
    DenseBlocks,
    capture_calls,
    resolve_target,
    sequential_refit,
)
from twossp_core.runtime.sequential import BatchState


class TwoSSPRefit(TwoSSP):
    config: TwoSSPRefitConfig

    def prune(self, ctx: PruneContext, sparsity: float) -> PruneOutcome:
        cfg = self.config
        plan = self.plan(ctx, sparsity)
        adapter = ctx.adapter
        # named as the stages the run reports (progress): the fused pass is stage 1 (it also does the first refit,
        # method_details.refit.stage1_in_refit_pass); refit_s counts the refit passes of their own
        timings: dict[str, float] = {}
        cost: dict[str, Any] = {}

        residual = cfg.refit_inputs == "sequential" and resolve_target(adapter, cfg.refit_target) == "residual"
        # stage 1 inside the first refit pass: its dense path is stage 1's forward (unless a sweep has the scores)
        fused = residual and cfg.stage2_on_refit and ctx.cache.get(self.scores_key()) is None
        if not fused:
            t0 = time.perf_counter()
            scores = self.neuron_scores(ctx)
            timings["stage1_s"] = time.perf_counter() - t0

        ctx.reporter.checkpoint()
        t0 = time.perf_counter()
        _reset_peak(ctx.calibration.device)
        dense_layers, calls, stats = None, None, None
        if cfg.refit_inputs == "dense":
            keep = [top_k(s, plan.kept_neurons) for s in scores]
            stats = refit.accumulate(adapter, ctx.calibration, keep, batch_size=cfg.batch_size, reporter=ctx.reporter)
            stage1.apply_width(adapter, scores, plan.kept_neurons)
            cost["accumulator_bytes"] = sum(s.nbytes() for s in stats if s is not None)
            if cfg.stage2_on_refit:
                blocks = refit.apply_refit(adapter, stats, cfg.ridge)
        else:
            dense_layers = DenseBlocks.of(adapter)
            cost.update(_sequential_memory(ctx, dense_layers, plan.kept_neurons, residual,
                                           cfg.selection == "reconstruction", cfg.shrinkage == "cross-validated"))
            if not fused:
                stage1.apply_width(adapter, scores, plan.kept_neurons)
            calls = capture_calls(adapter, ctx.calibration, cfg.batch_size)
            if fused:
                # progress: the pass is stage 1 (its dense forward), and the first refit is done with it
                blocks, scores = self._sequential(ctx, dense_layers, calls, plan.kept_neurons,
                                                  slice_to=plan.kept_neurons, stage=stage1.STAGE)
                ctx.reporter.update(refit.STAGE, 1.0)
                ctx.cache[self.scores_key()] = scores
            elif cfg.stage2_on_refit:
                blocks, _ = self._sequential(ctx, dense_layers, calls, plan.kept_neurons)
        timings["stage1_s" if fused else "refit_s"] = time.perf_counter() - t0

        ctx.reporter.checkpoint()
        t0 = time.perf_counter()
        removals = self.remove_attention(ctx, plan)
        timings["stage2_s"] = time.perf_counter() - t0

        t0, refit_again = time.perf_counter(), True
        if cfg.refit_inputs == "dense" and not cfg.stage2_on_refit:
            blocks = refit.apply_refit(adapter, stats, cfg.ridge)  # the same weights: they ignore attention
        elif cfg.refit_inputs == "sequential" and not cfg.stage2_on_refit:
            blocks, _ = self._sequential(ctx, dense_layers, calls, plan.kept_neurons)  # type: ignore[arg-type]
        elif cfg.refit_inputs == "sequential" and removals:
            # the refit again for the final structure, from the first block whose input stage 2 changed
            start = min(r.block for r in removals)
            kept = [None if adapter.mlp_removed(i) else top_k(s, plan.kept_neurons) for i, s in enumerate(scores)]
            again, _ = self._sequential(ctx, dense_layers, calls, plan.kept_neurons,  # type: ignore[arg-type]
                                        kept=kept, start=start)
            blocks = [b for b in blocks if b.block < start] + again
            cost["repeated_from_block"] = start
        else:
            refit_again = False
        if refit_again:
            timings["refit_s"] = timings.get("refit_s", 0.0) + time.perf_counter() - t0
        del dense_layers, calls, stats
        cost["peak_device_bytes"] = _peak(ctx.calibration.device)

        return self.outcome(plan, removals, timings, {
            "refit": {
                "ridge": cfg.ridge,
                "inputs": cfg.refit_inputs,
                "target": resolve_target(adapter, cfg.refit_target) if cfg.refit_inputs == "sequential" else "ffn",
                "stage2_on_refit": cfg.stage2_on_refit,
                "stage2_holdout": cfg.stage2_holdout,
                "selection": cfg.selection,
                "shrinkage": cfg.shrinkage,
                "stage1_in_refit_pass": fused,
                "seconds": timings.get("refit_s", 0.0),
                "fraction_of_stage1": timings.get("refit_s", 0.0) / timings["stage1_s"] if timings.get("stage1_s")
                else None,
                **cost,
                "calibration_tokens": int(ctx.calibration.numel()),
                "error_sliced": [b.error_sliced for b in blocks],
                "error_refit": [b.error_refit for b in blocks],
                "rejected_blocks": [b.block for b in blocks if b.kept_sliced],
                "alpha": [b.alpha for b in blocks],
            },
        })

    def _sequential(
        self, ctx: PruneContext, dense_layers: DenseBlocks, calls: list[BatchState] | None, kept_neurons: int,
        **options: Any,
    ) -> tuple[list[refit.BlockRefit], list[torch.Tensor] | None]:
        cfg = self.config
        return sequential_refit(
            ctx.adapter, dense_layers, ctx.calibration, ridge=cfg.ridge, target=cfg.refit_target,
            batch_size=cfg.batch_size, calls=calls, reporter=ctx.reporter,
            held_out=cfg.stage2_windows if cfg.stage2_holdout else 0,
            select=kept_neurons if cfg.selection == "reconstruction" else None,
            shrink=cfg.shrinkage == "cross-validated", **options,
        )


def _sequential_memory(
    ctx: PruneContext, dense_layers: DenseBlocks, kept: int, residual: bool, select: bool, folds: bool
) -> dict[str, Any]:
    """Bytes the sequential refit holds besides the model: the dense blocks (copies in memory; block by block, one
    block read at a time from the checkpoint, not counted), the hidden states at one block boundary for every
    calibration window (pruned and dense paths, plus, for the residual target without selection, the block's
    outputs and down-projection inputs) and one block's normal equations (with selection: over the full FFN width,
    with the selection's cross products and, at its peak, two more width x width matrices and its weights; with the
    cross-validated shrinkage, the odd windows' besides)."""
    hidden = int(ctx.adapter.config.hidden_size)
    param = next(ctx.adapter.model.parameters())
    tokens = int(ctx.calibration.numel())
    stored = residual and not select
    width = ctx.adapter.intermediate_size if select else kept
    return {
        "dense_blocks_bytes": dense_layers.nbytes(),
        "dense_blocks_device": dense_layers.where(),
        "boundary_states_bytes": tokens * hidden * param.element_size() * ((3 if stored else 2) if residual else 1),
        "activations_bytes": tokens * kept * param.element_size() if stored else 0,
        "accumulator_bytes": ((width * width + width * hidden + 1) * (2 if folds else 1)
                              + (width * (2 * width + 2 * hidden) if select else 0)) * 8,
    }


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
