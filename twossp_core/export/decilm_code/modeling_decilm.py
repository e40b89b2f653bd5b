"""DeciLM / Nemotron-NAS causal LM for transformers: Llama blocks whose attention and FFN vary per layer.

Every layer is built from its `block_configs` entry: a `no_op` attention or FFN is left out together with the
norm that fed it (the residual passes through), an attention has `num_attention_heads // n_heads_in_group`
key/value heads, an FFN the width its `ffn_mult` gives. Weight names are Llama's, so vLLM's `nemotron_nas`
implementation reads the same checkpoint. Only torch and transformers are imported here.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP

from .configuration_decilm import DeciLMConfig, ffn_mult_to_intermediate_size


class NoOpAttention(nn.Module):
    """A `no_op` attention: adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


class NoOpMLP(nn.Module):
    """A `no_op` FFN: adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


class DeciLMForCausalLM(LlamaForCausalLM):
    config_class = DeciLMConfig

    def __init__(self, config: DeciLMConfig) -> None:
        super().__init__(config)
        for idx, (layer, block) in enumerate(zip(self.model.layers, config.block_configs, strict=True)):
            if block.attention.no_op:
                layer.self_attn = NoOpAttention()
                layer.input_layernorm = nn.Identity()
            else:
                kv_heads = config.num_attention_heads // block.attention.n_heads_in_group
                if kv_heads != config.num_key_value_heads:
                    sub = copy.copy(config)
                    sub.num_key_value_heads = kv_heads
                    layer.self_attn = LlamaAttention(sub, idx)
            if block.ffn.no_op:
                layer.mlp = NoOpMLP()
                layer.post_attention_layernorm = nn.Identity()
            else:
                width = ffn_mult_to_intermediate_size(block.ffn.ffn_mult, config.hidden_size)
                if width != config.intermediate_size:
                    sub = copy.copy(config)
                    sub.intermediate_size = width
                    layer.mlp = LlamaMLP(sub)
