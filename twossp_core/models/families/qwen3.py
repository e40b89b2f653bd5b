"""Qwen3: Llama's layout with a q and a k RMSNorm (head_dim each) inside the attention; `attention_bias` adds
biases to q/k/v/o."""

from __future__ import annotations

from typing import Any

from twossp_core.models.families.layout import BlockFormula, Dims


class Qwen3Counts(BlockFormula):
    def attention(self, dims: Dims, cfg: dict[str, Any]) -> int:
        biases = dims.projection_biases if cfg.get("attention_bias") else 0
        return super().attention(dims, cfg) + 2 * dims.head_dim + biases
