"""Gemma 2: Llama's projections with sandwich norms, four RMSNorms per block."""

from __future__ import annotations

from typing import Any

from twossp_core.models.families.layout import BlockFormula, Dims


class Gemma2Counts(BlockFormula):
    def norms(self, dims: Dims, cfg: dict[str, Any]) -> int:
        return 4 * dims.hidden
