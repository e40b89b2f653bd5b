"""Qwen2: Llama's layout with biases on q, k and v (not on o), counted with the attention."""

from __future__ import annotations

from typing import Any

from twossp_core.models.families.layout import BlockFormula, Dims


class Qwen2Counts(BlockFormula):
    def attention(self, dims: Dims, cfg: dict[str, Any]) -> int:
        return super().attention(dims, cfg) + dims.q + 2 * dims.kv
