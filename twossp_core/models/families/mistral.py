"""Mistral: Llama's layout; `attention_bias` adds biases to q/k/v/o (the FFN has none)."""

from __future__ import annotations

from typing import Any

from twossp_core.models.families.layout import BlockFormula, Dims


class MistralCounts(BlockFormula):
    def attention(self, dims: Dims, cfg: dict[str, Any]) -> int:
        return super().attention(dims, cfg) + (dims.projection_biases if cfg.get("attention_bias") else 0)
