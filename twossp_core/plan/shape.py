"""What the memory plan needs from a model's config.json: its sizes and parameter counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twossp_core.models.counts import block_counts


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from a config.json."""

    blocks: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    block_params: int
    embedding_params: int
    norm_params: int  # the final norm
    head_params: int  # the LM head's own (with tied embeddings its matrix is the embeddings': a bias at most)
    tied: bool = False

    @property
    def resident_params(self) -> int:
        """Embeddings + final norm + LM head (tied weights counted once)."""
        return self.embedding_params + self.norm_params + self.head_params

    @property
    def total_params(self) -> int:
        return self.blocks * self.block_params + self.resident_params


def model_shape(cfg: dict[str, Any]) -> ModelShape:
    counts = block_counts(cfg)
    hidden, vocab = int(cfg["hidden_size"]), int(cfg["vocab_size"])
    tied = bool(cfg.get("tie_word_embeddings", cfg.get("model_type") in ("gemma", "gemma2")))
    phi = cfg.get("model_type") == "phi"  # LayerNorm with bias, LM head with bias
    return ModelShape(
        blocks=counts.blocks, hidden=hidden, intermediate=counts.intermediate_size,
        heads=int(cfg["num_attention_heads"]), vocab=vocab, block_params=counts.block,
        embedding_params=vocab * hidden, norm_params=hidden * (2 if phi else 1),
        head_params=(0 if tied else vocab * hidden) + (vocab if phi else 0), tied=tied,
    )
