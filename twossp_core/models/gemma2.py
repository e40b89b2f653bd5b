"""Gemma 2: sandwich norms around attention and FFN, and soft-capped final logits."""

import torch

from twossp_core.models.base import ModelAdapter


class Gemma2Adapter(ModelAdapter):
    attention_norms = ("input_layernorm", "post_attention_layernorm")
    mlp_norms = ("pre_feedforward_layernorm", "post_feedforward_layernorm")
    ffn_output_in_residual = False  # the FFN output passes through post_feedforward_layernorm

    def head(self, normed: torch.Tensor) -> torch.Tensor:
        logits = super().head(normed)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits
