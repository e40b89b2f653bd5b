"""Gemma: Llama's counts (the embedding scale is not a parameter)."""

from __future__ import annotations

from twossp_core.models.families.layout import BlockFormula


class GemmaCounts(BlockFormula):
    """Llama's layout: BlockFormula's defaults."""
