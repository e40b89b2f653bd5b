"""Phi (1/1.5/2): parallel block — one LayerNorm feeds both attention and FFN; fc1/fc2 with biases."""

from twossp_core.models.base import ModelAdapter


class PhiAdapter(ModelAdapter):
    attention_norms = ()  # the input LayerNorm also feeds the FFN, so it stays
    mlp_norms = ()
    down_proj = "fc2"
    up_projs = ("fc1",)
    attention_projs = ("q_proj", "k_proj", "v_proj", "dense")
    final_norm_module = "final_layernorm"
