"""Phi (1/1.5/2): parallel block — one LayerNorm feeds both attention and FFN; fc1/fc2 with biases."""

import torch

from twossp_core.models.base import ModelAdapter


class PhiAdapter(ModelAdapter):
    model_types = ("phi",)
    attention_norms = ()  # the input LayerNorm also feeds the FFN, so it stays
    mlp_norms = ()
    down_proj = "fc2"
    up_projs = ("fc1",)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder.final_layernorm(hidden)
