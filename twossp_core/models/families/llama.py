"""Llama: the reference layout; `attention_bias` adds biases to q/k/v/o and `mlp_bias` to the FFN."""

from __future__ import annotations

from typing import Any

from twossp_core.models.families.layout import BlockFormula, Dims


class LlamaCounts(BlockFormula):
    def attention(self, dims: Dims, cfg: dict[str, Any]) -> int:
        return super().attention(dims, cfg) + (dims.projection_biases if cfg.get("attention_bias") else 0)

    def mlp(self, dims: Dims, cfg: dict[str, Any]) -> int:
        return super().mlp(dims, cfg) + (2 * dims.intermediate + dims.hidden if cfg.get("mlp_bias") else 0)
