"""The `gguf` export format: one `model.gguf` that llama.cpp runs, the tokenizer inside.

A model whose blocks all keep their attention and an FFN of one width (whole-block methods, 2SSP without
attention removal) is written as the plain `llama` architecture. Any other structure uses llama.cpp's `deci`
architecture (Nemotron-NAS): per-layer `head_count` / `head_count_kv` (0 = no attention, the residual passes
through) and per-layer `feed_forward_length`. Two places where llama.cpp's `deci` graph would compute something
else than the pruned model are written as exact equivalents instead:

- A layer that keeps its attention but lost its FFN cannot say `feed_forward_length = 0`: the graph then skips
  the rest of the layer and drops the attention output too. It gets a zero FFN of width 1 (all weights zero,
  output exactly zero, three tiny matrices).
- The attention head size is read from layer 0's head count, so layer 0 cannot say `head_count = 0`. A removed
  attention in layer 0 is written as the `deci` "linear attention" (head_count_kv = 0) with a zero output
  matrix: it adds exactly zero, for one hidden x hidden matrix.

FFN widths are padded up to a multiple of `ffn_multiple` (default 64) with zero neurons: a neuron whose gate, up
and down weights are zero adds exactly zero, and widths that are multiples of 64 keep llama.cpp on its fast
matrix kernels (on the benchmark models, unpadded widths made generation 1.17-1.26 x slower, and widths that are
multiples of 32 but not 64 up to 1.2 x slower; see bench/README.md) and let q8_0 quantize the down projections.

A block that lost both its attention and its FFN is an identity and is left out. Weights are written in f32,
f16, bf16 or q8_0 (norms and other vectors stay f32; under q8_0 a matrix whose rows are not a multiple of 32
values is stored in f16, as llama.cpp's own converter does).

The writer takes the tensors block by block (`gguf_tensors`), so a source that holds one block at a time can
feed it the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from twossp_core.errors import InvalidSpec
from twossp_core.export.card import write_card
from twossp_core.export.context import exported_context
from twossp_core.export.gguf_vocab import gguf_vocab, write_vocab
from twossp_core.export.remote_modeling import SHORTCUT_KEY, STRUCTURE_KEY

GGUF_FILE = "model.gguf"
ZERO_FFN_WIDTH = 1
METADATA_KEY = "twossp.metadata"


@dataclass(frozen=True)
class LayerPlan:
    source: int  # block index in the pruned model
    attention: str  # "full", "zero-linear" (layer 0 without attention) or "none"
    n_ff: int  # FFN width written (ZERO_FFN_WIDTH for a zero FFN; the model's width padded with zero neurons)
    zero_ffn: bool = False
    width: int = 0  # the model's FFN width (n_ff - width zero neurons are added)


def padded(width: int, multiple: int) -> int:
    return -(-width // multiple) * multiple


def _ffn_width(adapter: Any, idx: int) -> int:
    if adapter.mlp_removed(idx):
        return 0
    return int(getattr(adapter.mlp(idx), adapter.down_proj).in_features)


def plan_layers(adapter: Any, ffn_multiple: int = 1) -> tuple[str, list[LayerPlan]]:
    """The architecture (`llama` or `deci`) and what each written layer holds (FFN widths padded with zero
    neurons to a multiple of `ffn_multiple`)."""
    kept: list[tuple[int, bool, int]] = []
    for idx in range(adapter.num_blocks):
        attention, width = not adapter.attention_removed(idx), _ffn_width(adapter, idx)
        if attention or width:
            kept.append((idx, attention, width))
    if not kept:
        raise InvalidSpec("export 'gguf': every block is empty; nothing for llama.cpp to run")
    if all(a for _, a, _ in kept) and len({w for _, _, w in kept}) == 1:
        return "llama", [LayerPlan(i, "full", padded(w, ffn_multiple), width=w) for i, _, w in kept]
    plans = []
    for pos, (idx, attention, width) in enumerate(kept):
        kind = "full" if attention else ("zero-linear" if pos == 0 else "none")
        zero_ffn = width == 0  # attention kept (an empty block was left out above)
        n_ff = ZERO_FFN_WIDTH if zero_ffn else padded(width, ffn_multiple)
        plans.append(LayerPlan(idx, kind, n_ff, zero_ffn, width))
    return "deci", plans


def _rope(config: Any) -> tuple[float, dict[str, Any]]:
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        raise InvalidSpec(f"export 'gguf': rope scaling {kind!r} is not supported (default, linear, llama3)")
    return theta, {**params, "rope_type": kind}


def _llama3_rope_factors(params: dict[str, Any], head_dim: int, theta: float, context: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1 rope scaling, as llama.cpp's rope_freqs tensor holds them."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old = float(params.get("original_max_position_embeddings", context))
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _to_rope_pairs(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder q/k output rows from transformers' half-split rotary layout to llama.cpp's adjacent pairs."""
    head_dim = weight.shape[0] // heads
    return weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


def gguf_tensors(adapter: Any, plans: list[LayerPlan]) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in the torch [out, in] shape) for every tensor, block by block."""
    config = adapter.config
    hidden = int(config.hidden_size)
    n_head, n_kv = int(config.num_attention_heads), int(config.num_key_value_heads or config.num_attention_heads)
    yield "token_embd.weight", _np(adapter.decoder.embed_tokens.weight)
    q_name, k_name, v_name, o_name = adapter.attention_projs
    gate_name, up_name = adapter.up_projs
    for pos, plan in enumerate(plans):
        layer = adapter.layers[plan.source]
        prefix = f"blk.{pos}"
        if plan.attention == "full":
            attn = adapter.attention(plan.source)
            yield f"{prefix}.attn_norm.weight", _np(getattr(layer, adapter.attention_norms[0]).weight)
            for proj, gguf_name, heads in ((q_name, "attn_q", n_head), (k_name, "attn_k", n_kv), (v_name, "attn_v", 0),
                                           (o_name, "attn_output", 0)):
                linear = getattr(attn, proj)
                weight, bias = linear.weight, linear.bias
                if heads:
                    weight = _to_rope_pairs(weight, heads)
                    bias = _to_rope_pairs(bias, heads) if bias is not None else None
                yield f"{prefix}.{gguf_name}.weight", _np(weight)
                if bias is not None:
                    yield f"{prefix}.{gguf_name}.bias", _np(bias)
        elif plan.attention == "zero-linear":
            yield f"{prefix}.attn_norm.weight", np.ones(hidden, dtype=np.float32)
            yield f"{prefix}.attn_output.weight", np.zeros((hidden, hidden), dtype=np.float32)
        if plan.zero_ffn:
            yield f"{prefix}.ffn_norm.weight", np.ones(hidden, dtype=np.float32)
            yield f"{prefix}.ffn_gate.weight", np.zeros((plan.n_ff, hidden), dtype=np.float32)
            yield f"{prefix}.ffn_up.weight", np.zeros((plan.n_ff, hidden), dtype=np.float32)
            yield f"{prefix}.ffn_down.weight", np.zeros((hidden, plan.n_ff), dtype=np.float32)
        elif plan.n_ff:
            mlp = adapter.mlp(plan.source)
            yield f"{prefix}.ffn_norm.weight", _np(getattr(layer, adapter.mlp_norms[0]).weight)
            pad = plan.n_ff - plan.width  # zero neurons: rows of gate/up (and their biases), columns of down
            for proj, gguf_name in ((gate_name, "ffn_gate"), (up_name, "ffn_up"), (adapter.down_proj, "ffn_down")):
                linear = getattr(mlp, proj)
                down = gguf_name == "ffn_down"
                weight = _np(linear.weight)
                if pad:
                    weight = np.pad(weight, ((0, 0), (0, pad)) if down else ((0, pad), (0, 0)))
                yield f"{prefix}.{gguf_name}.weight", weight
                if linear.bias is not None:
                    bias = _np(linear.bias)
                    yield f"{prefix}.{gguf_name}.bias", bias if down or not pad else np.pad(bias, (0, pad))
    yield "output_norm.weight", _np(adapter.decoder.norm.weight)
    if not getattr(config, "tie_word_embeddings", False):
        yield "output.weight", _np(adapter.model.lm_head.weight)


def _encode(gguf: Any, array: np.ndarray, wanted: Any) -> tuple[np.ndarray, Any]:
    """The stored array and its GGML type: vectors stay f32; q8_0 falls back to f16 for odd row lengths."""
    types = gguf.GGMLQuantizationType
    if array.ndim < 2 or wanted == types.F32:
        return array.astype(np.float32), types.F32
    if wanted == types.F16:
        return array.astype(np.float16), types.F16
    try:
        return gguf.quants.quantize(array, wanted), wanted
    except gguf.QuantError:
        return array.astype(np.float16), types.F16


WEIGHT_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
                "q8_0": ("Q8_0", "MOSTLY_Q8_0")}


def write_gguf(
    model: Any, tokenizer: Any, path: Path, metadata: dict[str, Any], weight_type: str, ffn_multiple: int = 1
) -> dict[str, Any]:
    """Write `model` to `path` (atomically); returns a summary (architecture, layers, stored parameters)."""
    import gguf

    from twossp_core.models.registry import adapter_for

    structure = getattr(model.config, STRUCTURE_KEY, None) or {}
    if structure.get(SHORTCUT_KEY):
        raise InvalidSpec("export 'gguf' cannot hold a rotated-and-sliced model (slicegpt); use 'compact'")
    adapter = adapter_for(model)
    config = model.config
    arch, plans = plan_layers(adapter, ffn_multiple)
    vocab = gguf_vocab(tokenizer, int(config.vocab_size))
    theta, rope = _rope(config)
    n_head, n_kv = int(config.num_attention_heads), int(config.num_key_value_heads or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    qtype_name, ftype_name = WEIGHT_TYPES[weight_type]
    wanted = getattr(gguf.GGMLQuantizationType, qtype_name)
    context, window_cap = exported_context(config)

    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        name = Path(str(metadata.get("model") or "model")).name
        writer.add_name(f"{name} pruned with {metadata.get('method', 'twossp')}")
        writer.add_context_length(context)
        writer.add_embedding_length(int(config.hidden_size))
        writer.add_block_count(len(plans))
        if arch == "llama":
            writer.add_feed_forward_length(plans[0].n_ff)
            writer.add_head_count(n_head)
            writer.add_head_count_kv(n_kv)
        else:
            writer.add_feed_forward_length([p.n_ff for p in plans])
            writer.add_head_count([0 if p.attention == "none" else n_head for p in plans])
            writer.add_head_count_kv([n_kv if p.attention == "full" else 0 for p in plans])
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(theta)
        if rope["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_vocab_size(int(config.vocab_size))
        writer.add_file_type(getattr(gguf.LlamaFileType, ftype_name))
        write_vocab(writer, vocab)
        writer.add_string(METADATA_KEY, json.dumps(metadata, sort_keys=True, default=str))

        stored = 0
        if rope["rope_type"] == "llama3":
            factors = _llama3_rope_factors(rope, head_dim, theta, int(config.max_position_embeddings))
            writer.add_tensor("rope_freqs.weight", factors, raw_dtype=gguf.GGMLQuantizationType.F32)
        for tensor_name, array in gguf_tensors(adapter, plans):
            stored += array.size
            data, qtype = _encode(gguf, array, wanted)
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.replace(path)
    return {
        "architecture": arch,
        "layers": len(plans),
        "zero_ffn_layers": [p.source for p in plans if p.zero_ffn],
        "zero_attention_layers": [p.source for p in plans if p.attention == "zero-linear"],
        "ffn_padding": {p.source: p.n_ff - p.width for p in plans if not p.zero_ffn and p.n_ff > p.width},
        "stored_params": stored,
        "context_length": context,
        "context_capped_by_sliding_window": window_cap is not None,
        "files": [path.name],
    }


def export_gguf(
    model: Any, tokenizer: Any, out_dir: Path, metadata: dict[str, Any], options: BaseModel
) -> dict[str, Any]:
    """The `gguf` export format: out_dir/model.gguf and the model card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weight_type = options.type  # type: ignore[attr-defined]
    summary = write_gguf(model, tokenizer, out_dir / GGUF_FILE, {**metadata, "gguf_type": weight_type}, weight_type,
                         options.ffn_multiple)  # type: ignore[attr-defined]
    write_card(out_dir, metadata, "gguf", model.config, summary["files"])
    return summary
