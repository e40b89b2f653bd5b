"""Phi-3: fused projections — `qkv_proj` in the attention and `gate_up_proj` (gate rows, then up rows)."""

import torch

from twossp_core.models.base import ModelAdapter, slice_linear


class Phi3Adapter(ModelAdapter):
    up_projs = ("gate_up_proj",)

    def slice_ffn(self, idx: int, keep: torch.Tensor) -> None:
        mlp = self.mlp(idx)
        d_int = mlp.down_proj.in_features
        fused = torch.cat([keep, keep + d_int])  # same neurons in the gate half and the up half
        mlp.gate_up_proj = slice_linear(mlp.gate_up_proj, fused, dim=0)
        mlp.down_proj = slice_linear(mlp.down_proj, keep, dim=1)
