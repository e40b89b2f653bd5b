"""The count formula of a Llama-layout block and the counts it gives; each family's formula overrides the parts
that differ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


@dataclass(frozen=True)
class Dims:
    """The sizes config.json gives for one block."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> Dims:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        return cls(
            hidden=hidden,
            intermediate=int(cfg["intermediate_size"]),
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
        )

    @property
    def q(self) -> int:
        """Width of the query projection (and of the output projection's input)."""
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        """Width of the key and of the value projection."""
        return self.kv_heads * self.head_dim

    @property
    def projection_biases(self) -> int:
        """Bias parameters of q, k, v and o together."""
        return self.q + 2 * self.kv + self.hidden


class BlockFormula:
    """Llama's layout without biases: q/k/v/o projections (a fused qkv has the same count), a gate/up/down
    FFN and one RMSNorm before each of them."""

    def attention(self, dims: Dims, cfg: dict[str, Any]) -> int:
        return 2 * dims.hidden * dims.q + 2 * dims.hidden * dims.kv

    def mlp(self, dims: Dims, cfg: dict[str, Any]) -> int:
        return 3 * dims.hidden * dims.intermediate

    def norms(self, dims: Dims, cfg: dict[str, Any]) -> int:
        """Parameters of the block's norms (outside its attention and FFN)."""
        return 2 * dims.hidden

    def block_counts(self, cfg: dict[str, Any]) -> BlockCounts:
        dims = Dims.of(cfg)
        attention, mlp = self.attention(dims, cfg), self.mlp(dims, cfg)
        return BlockCounts(
            blocks=int(cfg["num_hidden_layers"]),
            attention=attention,
            mlp=mlp,
            block=attention + mlp + self.norms(dims, cfg),
            intermediate_size=dims.intermediate,
        )
