"""Tiny randomly initialised causal LMs of every supported family, built from configs (no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

COMMON: dict[str, Any] = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def tiny_config(family: str) -> Any:
    import transformers as tf

    kw = dict(COMMON)
    if family == "llama":
        return tf.LlamaConfig(**kw)
    if family == "mistral":
        return tf.MistralConfig(**kw, sliding_window=16)
    if family == "qwen2":
        return tf.Qwen2Config(**kw)
    if family == "qwen3":
        return tf.Qwen3Config(**kw, head_dim=8)
    if family == "phi3":
        return tf.Phi3Config(**kw, pad_token_id=0)
    if family == "phi":
        return tf.PhiConfig(**kw, partial_rotary_factor=0.5)
    if family == "gemma":
        return tf.GemmaConfig(**kw, head_dim=8)
    if family == "gemma2":
        return tf.Gemma2Config(**kw, head_dim=8, sliding_window=16, final_logit_softcapping=30.0)
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "phi", "gemma", "gemma2"]


def tiny_model(family: str, seed: int = 0, **overrides: Any) -> Any:
    """A tiny model of `family`; `overrides` replace config fields (e.g. vocab_size, intermediate_size)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # random init is near-degenerate; spread the weights so pruning decisions are not all ties
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
            elif "norm" in name or "layernorm" in name:
                p.uniform_(0.5, 1.5) if family not in ("gemma", "gemma2") else p.uniform_(-0.5, 0.5)
    model.eval()
    return model


def save_tiny(family: str, path: Path, seed: int = 0) -> Path:
    """A local model directory (config, weights, a byte-level tokenizer) for CLI/pipeline tests."""
    model = tiny_model(family, seed)
    model.save_pretrained(path)
    tokenizer_for(model.config.vocab_size).save_pretrained(path)
    return path


TINY_TEXT = " ".join(["the cat sat on the mat and it was fun to see a dog run in the park"] * 200)


def tiny_workdir(root: Path, family: str | None = "llama") -> Path:
    """`root` holding text.txt (TINY_TEXT) and, unless family is None, a tiny model saved in model/."""
    (root / "text.txt").write_text(TINY_TEXT)
    if family is not None:
        save_tiny(family, root / "model")
    return root


def tokenizer_for(vocab_size: int) -> Any:
    """A small word-level tokenizer whose ids stay below vocab_size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    words += [".", ",", "!", "?", "the", "a", "and", "to", "of", "in", "is", "it", "was", "he", "she"]
    vocab = {w: i for i, w in enumerate(words[:vocab_size])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
