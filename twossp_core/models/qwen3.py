"""Qwen3: Llama layout with q/k RMSNorms inside the attention (removed with it)."""

from twossp_core.models.base import ModelAdapter


class Qwen3Adapter(ModelAdapter):
    model_types = ("qwen3",)
