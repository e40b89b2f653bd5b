"""Mistral: Llama layout (sliding-window attention does not change the pruned structure)."""

from twossp_core.models.base import ModelAdapter


class MistralAdapter(ModelAdapter):
    """Llama's layout: ModelAdapter's defaults."""
