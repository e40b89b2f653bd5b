"""Llama: the reference layout (pre-norm, SwiGLU FFN with gate/up/down projections)."""

from twossp_core.models.base import ModelAdapter


class LlamaAdapter(ModelAdapter):
    """The reference layout: ModelAdapter's defaults."""
