"""Parameter counts of one transformer block computed from a config.json dict (torch-free).

Used to check a request before any model is loaded (e.g. by the API); tests hold these formulas equal
to the counts of the instantiated models for every supported family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twossp_core.models.registry import check_supported


@dataclass(frozen=True)
class BlockCounts:
    blocks: int
    attention: int
    mlp: int
    block: int  # one whole block: attention + FFN + norms
    intermediate_size: int

    @property
    def blocks_total(self) -> int:
        return self.blocks * self.block


def block_counts(cfg: dict[str, Any]) -> BlockCounts:
    family = cfg.get("model_type")
    check_supported(family)
    h = int(cfg["hidden_size"])
    d = int(cfg["intermediate_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    q, k = heads * hd, kv * hd
    attn = h * q + 2 * h * k + q * h
    mlp = 3 * h * d
    norms = 2 * h
    if family in ("llama", "mistral") and cfg.get("attention_bias"):
        attn += q + 2 * k + h
    if family == "llama" and cfg.get("mlp_bias"):
        mlp += 2 * d + h
    if family == "qwen2":
        attn += q + 2 * k
    if family == "qwen3":
        attn += 2 * hd + (q + 2 * k + h if cfg.get("attention_bias") else 0)
    if family == "gemma2":
        norms = 4 * h
    if family == "phi":
        attn += q + 2 * k + h
        if cfg.get("qk_layernorm"):
            attn += 4 * hd
        mlp = 2 * h * d + d + h
        norms = 2 * h  # one LayerNorm with bias
    layers = int(cfg["num_hidden_layers"])
    return BlockCounts(blocks=layers, attention=attn, mlp=mlp, block=attn + mlp + norms, intermediate_size=d)
