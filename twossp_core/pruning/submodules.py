"""Attention/FFN submodules as removal candidates: their parameter cost and removal (shared by BlockPruner
and EvoPress)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from twossp_core.models.base import ModelAdapter

Kind = Literal["attention", "mlp"]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def removal_cost(adapter: ModelAdapter, kind: Kind, idx: int) -> int:
    """Parameters freed by removing the submodule together with the norms that only feed it."""
    layer = adapter.layers[idx]
    if kind == "attention":
        names = (adapter.attention_module, *adapter.attention_norms)
    else:
        names = (adapter.mlp_module, *adapter.mlp_norms)
    return sum(_count(getattr(layer, n)) for n in names)


def is_removed(adapter: ModelAdapter, kind: Kind, idx: int) -> bool:
    return adapter.attention_removed(idx) if kind == "attention" else adapter.mlp_removed(idx)


def remove(adapter: ModelAdapter, kind: Kind, idx: int) -> None:
    if kind == "attention":
        adapter.remove_attention(idx)
    else:
        adapter.remove_mlp(idx)


def remaining(adapter: ModelAdapter) -> list[tuple[Kind, int]]:
    """Every submodule still present, attention first, in block order."""
    out: list[tuple[Kind, int]] = []
    for kind in ("attention", "mlp"):
        out += [(kind, i) for i in range(adapter.num_blocks) if not is_removed(adapter, kind, i)]  # type: ignore[misc]
    return out


def delete_emptied_blocks(
    adapter: ModelAdapter, attention: list[int], mlp: list[int]
) -> tuple[list[int], list[int], list[int]]:
    """Physically delete the blocks that lost both their attention and their FFN (each only passed its input on),
    so the model gets shallower and, with nothing else removed, loads as its plain architecture.

    Takes the removed attention and FFN indices; returns (attention-only, FFN-only, deleted blocks), all in the
    numbering before deletion. A model whose every block was emptied keeps its (empty) blocks.
    """
    empty = sorted(set(attention) & set(mlp))
    if not empty or len(empty) >= adapter.num_blocks:
        return sorted(attention), sorted(mlp), []
    adapter.remove_blocks(empty)
    return sorted(set(attention) - set(empty)), sorted(set(mlp) - set(empty)), empty
