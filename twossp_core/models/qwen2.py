"""Qwen2: Llama layout with biases on q/k/v (counted with the attention)."""

from twossp_core.models.base import ModelAdapter


class Qwen2Adapter(ModelAdapter):
    """Llama's layout (biased q/k/v projections): ModelAdapter's defaults."""
