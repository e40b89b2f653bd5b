"""Phi (1/1.5/2): biased q/k/v/dense projections (plus q/k LayerNorms with `qk_layernorm`), an fc1/fc2 FFN with
biases and one LayerNorm (weight and bias) feeding both."""

from __future__ import annotations

from typing import Any

from twossp_core.models.families.layout import BlockFormula, Dims


class PhiCounts(BlockFormula):
    def attention(self, dims: Dims, cfg: dict[str, Any]) -> int:
        qk_norms = 4 * dims.head_dim if cfg.get("qk_layernorm") else 0
        return super().attention(dims, cfg) + dims.projection_biases + qk_norms

    def mlp(self, dims: Dims, cfg: dict[str, Any]) -> int:
        return 2 * dims.hidden * dims.intermediate + dims.intermediate + dims.hidden

    def norms(self, dims: Dims, cfg: dict[str, Any]) -> int:
        return 2 * dims.hidden  # one LayerNorm with bias
