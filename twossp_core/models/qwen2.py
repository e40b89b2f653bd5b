"""Qwen2: Llama layout with biases on q/k/v (counted with the attention)."""

from twossp_core.models.base import ModelAdapter


class Qwen2Adapter(ModelAdapter):
    model_types = ("qwen2",)
