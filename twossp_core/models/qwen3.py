"""Qwen3: Llama layout with q/k RMSNorms inside the attention (removed with it)."""

from twossp_core.models.base import ModelAdapter


class Qwen3Adapter(ModelAdapter):
    """Llama's layout (q/k norms inside attention): ModelAdapter's defaults."""
