"""How 2SSP splits a sparsity target between attention modules (depth) and FFN neurons (width).

Pure arithmetic on parameter counts; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twossp_core.errors import InfeasibleTarget

if TYPE_CHECKING:
    from twossp_core.models.families.layout import BlockCounts
    from twossp_core.pruning.twossp.config import TwoSSPConfig


@dataclass(frozen=True)
class BalancePlan:
    num_attention: int  # attention modules to remove (stage 2)
    kept_neurons: int  # FFN intermediate neurons kept in every block (stage 1), a multiple of round_to
    target_params: int  # round(s * P_blocks)
    ffn_params_per_block: int  # parameters stage 1 should remove from each block's FFN (before rounding K)


def attention_count(blocks: int, sparsity: float, mlp_params: int, attn_params: int, alpha: float) -> int:
    """N_attn = round(B * s ** ((P_mlp / P_attn) / alpha)), Python rounding."""
    return round(blocks * sparsity ** ((mlp_params / attn_params) / alpha))


def plan_balance(
    *,
    blocks: int,
    sparsity: float,
    mlp_params: int,
    attn_params: int,
    block_params_total: int,
    intermediate_size: int,
    alpha: float = 1.5,
    num_attention: int | None = None,
    round_to: int = 1,
) -> BalancePlan:
    """round_to > 1 moves the kept neuron count to the nearest multiple (at least one multiple, at most the FFN
    size): matrix shapes that are multiples of 8 run markedly faster than odd ones, for a change of the achieved
    sparsity of at most round_to / 2 neurons per block."""
    if not 0.0 < sparsity < 1.0:
        raise InfeasibleTarget(f"sparsity must be strictly between 0 and 1, got {sparsity}")
    n_attn = num_attention
    if n_attn is None:
        n_attn = attention_count(blocks, sparsity, mlp_params, attn_params, alpha)
    if n_attn > blocks:
        raise InfeasibleTarget(f"cannot remove {n_attn} attention modules: the model has {blocks} blocks")
    target = round(sparsity * block_params_total)
    attn_removed = n_attn * attn_params
    if attn_removed > target:
        raise InfeasibleTarget(
            f"removing {n_attn} attention modules takes {attn_removed} parameters, more than the target "
            f"{target} (= {sparsity} x {block_params_total} block parameters); lower num_attention_to_prune "
            "or raise the sparsity"
        )
    per_block = round((target - attn_removed) / blocks)
    kept = round(intermediate_size * (1 - per_block / mlp_params))
    if kept < 1:
        remedy = "lower the sparsity"
        if n_attn < blocks:
            remedy += f" or remove more attention modules (num_attention_to_prune: {n_attn} of {blocks})"
        else:
            remedy += " (every attention module is removed already)"
        raise InfeasibleTarget(
            f"target {target} of {block_params_total} block parameters needs {per_block} FFN parameters per block "
            f"but an FFN has only {mlp_params}: even removing every neuron is not enough; {remedy}"
        )
    if round_to > 1:
        kept = min(intermediate_size, max(round_to, round(kept / round_to) * round_to))
    return BalancePlan(num_attention=n_attn, kept_neurons=kept, target_params=target, ffn_params_per_block=per_block)


def check_feasible(counts: BlockCounts, sparsity: float, config: TwoSSPConfig) -> int:
    """The registry's preflight for 2SSP: InfeasibleTarget unless the balance can be planned on this shape;
    returns the FFN width every block keeps."""
    return plan_balance(
        blocks=counts.blocks,
        sparsity=sparsity,
        mlp_params=counts.mlp,
        attn_params=counts.attention,
        block_params_total=counts.blocks_total,
        intermediate_size=counts.intermediate_size,
        alpha=config.alpha,
        num_attention=config.num_attention_to_prune,
        round_to=config.round_to,
    ).kept_neurons
