"""Gemma: Llama layout; embeddings are scaled by sqrt(hidden) inside the model (handled by transformers)."""

from twossp_core.models.base import ModelAdapter


class GemmaAdapter(ModelAdapter):
    """Llama's layout: ModelAdapter's defaults."""
