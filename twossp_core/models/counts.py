"""Parameter counts of one transformer block computed from a config.json dict (torch-free).

Used to check a request before any model is loaded (e.g. by the API). Each family owns its formula
(`twossp_core/models/families/`); tests hold every formula equal to the counts of the instantiated model.
"""

from __future__ import annotations

from typing import Any

from twossp_core.models.families.layout import BlockCounts
from twossp_core.models.registry import formula_for


def block_counts(cfg: dict[str, Any]) -> BlockCounts:
    """Counts by the formula of the family named by cfg["model_type"] (UnsupportedModel for any other)."""
    return formula_for(cfg.get("model_type")).block_counts(cfg)
