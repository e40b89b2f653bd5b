"""The benchmark's models and calibration data: randomly initialised Llamas fed real tokenized text.

The weights are random but spread (fixed seed, per-layer scaled normal init, non-unit norm gains) so that
removing different attention modules changes the calibration perplexity by clearly different amounts:
with the default near-zero init every candidate scores about the same and a greedy search ranks ties.
The full model uses the real 4,096-token byte-level BPE of `c4llama-8l` and real C4 text; the quick one the
512-token vocabulary of `stories260k` and TinyStories text, which keeps its LM head / block size ratio close to
that of real LLMs.
Attention is grouped-query (2 query heads per key/value head), as in current Llama-family models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from twossp_core.example_data import example_data_dir

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return example_data_dir(REPO, "TWOSSP_TEST_DATA")


@dataclass(frozen=True)
class BenchModel:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int  # grouped-query attention, as in current Llama-family models
    seq_len: int
    calibration_windows: int  # stage 1 (and BlockPruner/EvoPress) calibration windows
    tokenizer: str = "c4llama-8l"  # a model directory under data/models whose tokenizer and vocabulary are used
    text: str = "c4-validation-2k.jsonl"  # under data/text: JSON lines with "text", or plain text
    vocab: int = 4096
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        return asdict(self)


FULL = BenchModel("full", layers=12, hidden=512, intermediate=1376, heads=8, kv_heads=4, seq_len=1024,
                  calibration_windows=32)
QUICK = BenchModel("quick", layers=12, hidden=128, intermediate=344, heads=4, kv_heads=2, seq_len=256,
                   calibration_windows=8, tokenizer="stories260k", text="tinystories-val-1000.txt", vocab=512)
# wider blocks (147 M parameters): per-token costs that do not scale with the weights (graph set-up, the Python
# call, sampling buffers) weigh less next to the matrix work, as in real LLMs (bench/llamacpp.py --model wide)
WIDE = BenchModel("wide", layers=12, hidden=1024, intermediate=2752, heads=16, kv_heads=8, seq_len=512,
                  calibration_windows=8)
SPECS = {m.name: m for m in (FULL, QUICK, WIDE)}


def build_model(spec: BenchModel) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=max(2048, spec.seq_len),
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p.shape[1]
                gain = 1.0 if "embed" in name else 1.6 / math.sqrt(fan_in)
                p.copy_(torch.randn(p.shape, generator=gen) * gain)
            elif "norm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    model.eval()
    return model


def calibration_windows(spec: BenchModel, count: int) -> torch.Tensor:
    """`count` consecutive windows of real text tokenized with a real tokenizer (see the spec)."""
    import json

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(data_dir() / "models" / spec.tokenizer)
    if len(tokenizer) > spec.vocab:
        raise ValueError(f"the {spec.tokenizer} tokenizer has {len(tokenizer)} tokens, more than vocab {spec.vocab}")
    needed = count * spec.seq_len
    ids: list[int] = []
    with open(data_dir() / "text" / spec.text) as fh:
        for line in fh:
            text = json.loads(line)["text"] + "\n\n" if spec.text.endswith(".jsonl") else line
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(ids) >= needed:
                break
    if len(ids) < needed:
        raise RuntimeError(f"not enough calibration text for {count} windows of {spec.seq_len} tokens")
    return torch.tensor(ids[:needed], dtype=torch.long).view(count, spec.seq_len)
