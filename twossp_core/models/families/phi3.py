"""Phi-3: Llama's counts; the fused `qkv_proj` and `gate_up_proj` hold as many weights as the split ones."""

from __future__ import annotations

from twossp_core.models.families.layout import BlockFormula


class Phi3Counts(BlockFormula):
    """Llama's layout: BlockFormula's defaults."""
