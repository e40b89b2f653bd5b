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

Every tensor is planned first (`gguf_tensors`: name, shape and how to compute it) and the header, which holds each
tensor's type and offset, is written from the plan; then the data follows one tensor at a time, each block's read
just before its tensors are written. So no more than one block is held at once, and a block-by-block model
(`runtime/offload.py`) writes the same file as the in-memory one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from twossp_core.errors import InvalidSpec
from twossp_core.export.card import CardSection, write_card
from twossp_core.export.context import exported_context
from twossp_core.export.gguf_vocab import gguf_vocab, write_vocab
from twossp_core.export.remote_modeling import SHORTCUT_KEY, STRUCTURE_KEY
from twossp_core.export.streamed import materialise
from twossp_core.plan.sources import ModelInput

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


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the file, known before its data: the name, the float32 shape in torch's [out, in] order, and
    how to compute the array (called once, when `layer`, the decoder block it comes from, is in memory)."""

    name: str
    shape: tuple[int, ...]
    value: Callable[[], np.ndarray]
    layer: Any = None


def _constant(name: str, shape: tuple[int, ...], fill: float) -> GGUFTensor:
    return GGUFTensor(name, shape, lambda: np.full(shape, fill, dtype=np.float32))


def _from(name: str, module: Any, attr: str, layer: Any = None, *, heads: int = 0, pad: int = 0,
          pad_dim: int = 0) -> GGUFTensor:
    """`module.attr` (read when the value is computed: block by block, the parameter is replaced each time its
    block is read), its q/k rows reordered for `heads` heads, `pad` zeros appended along `pad_dim`."""
    shape = list(getattr(module, attr).shape)
    if pad:
        shape[pad_dim] += pad

    def value() -> np.ndarray:
        tensor = getattr(module, attr)
        array = _np(_to_rope_pairs(tensor, heads) if heads else tensor)
        if pad:
            widths = [(0, 0)] * array.ndim
            widths[pad_dim] = (0, pad)
            array = np.pad(array, widths)
        return array

    return GGUFTensor(name, tuple(shape), value, layer)


def gguf_tensors(adapter: Any, plans: list[LayerPlan]) -> list[GGUFTensor]:
    """Every tensor of the file in order (float32 values in the torch [out, in] shape), block by block; no data is
    read or computed until a tensor's `value` is called."""
    config = adapter.config
    hidden = int(config.hidden_size)
    n_head, n_kv = int(config.num_attention_heads), int(config.num_key_value_heads or config.num_attention_heads)
    tensors = [_from("token_embd.weight", adapter.decoder.embed_tokens, "weight")]
    q_name, k_name, v_name, o_name = adapter.attention_projs
    gate_name, up_name = adapter.up_projs
    for pos, plan in enumerate(plans):
        layer = adapter.layers[plan.source]
        prefix = f"blk.{pos}"
        if plan.attention == "full":
            attn = adapter.attention(plan.source)
            tensors.append(_from(f"{prefix}.attn_norm.weight", getattr(layer, adapter.attention_norms[0]), "weight",
                                 layer))
            for proj, gguf_name, heads in ((q_name, "attn_q", n_head), (k_name, "attn_k", n_kv), (v_name, "attn_v", 0),
                                           (o_name, "attn_output", 0)):
                linear = getattr(attn, proj)
                tensors.append(_from(f"{prefix}.{gguf_name}.weight", linear, "weight", layer, heads=heads))
                if linear.bias is not None:
                    tensors.append(_from(f"{prefix}.{gguf_name}.bias", linear, "bias", layer, heads=heads))
        elif plan.attention == "zero-linear":
            tensors.append(_constant(f"{prefix}.attn_norm.weight", (hidden,), 1.0))
            tensors.append(_constant(f"{prefix}.attn_output.weight", (hidden, hidden), 0.0))
        if plan.zero_ffn:
            tensors.append(_constant(f"{prefix}.ffn_norm.weight", (hidden,), 1.0))
            tensors.append(_constant(f"{prefix}.ffn_gate.weight", (plan.n_ff, hidden), 0.0))
            tensors.append(_constant(f"{prefix}.ffn_up.weight", (plan.n_ff, hidden), 0.0))
            tensors.append(_constant(f"{prefix}.ffn_down.weight", (hidden, plan.n_ff), 0.0))
        elif plan.n_ff:
            mlp = adapter.mlp(plan.source)
            tensors.append(_from(f"{prefix}.ffn_norm.weight", getattr(layer, adapter.mlp_norms[0]), "weight", layer))
            pad = plan.n_ff - plan.width  # zero neurons: rows of gate/up (and their biases), columns of down
            for proj, gguf_name in ((gate_name, "ffn_gate"), (up_name, "ffn_up"), (adapter.down_proj, "ffn_down")):
                linear = getattr(mlp, proj)
                down = gguf_name == "ffn_down"
                tensors.append(_from(f"{prefix}.{gguf_name}.weight", linear, "weight", layer, pad=pad,
                                     pad_dim=1 if down else 0))
                if linear.bias is not None:
                    tensors.append(_from(f"{prefix}.{gguf_name}.bias", linear, "bias", layer, pad=0 if down else pad))
    tensors.append(_from("output_norm.weight", adapter.decoder.norm, "weight"))
    if not getattr(config, "tie_word_embeddings", False):
        tensors.append(_from("output.weight", adapter.model.lm_head, "weight"))
    return tensors


def stored_type(gguf: Any, shape: tuple[int, ...], wanted: Any) -> Any:
    """The GGML type a tensor is stored in: vectors stay f32; q8_0 falls back to f16 for rows that are not a
    multiple of its block (32 values)."""
    types = gguf.GGMLQuantizationType
    if len(shape) < 2 or wanted == types.F32:
        return types.F32
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    return wanted if shape[-1] % block == 0 else types.F16


def stored_bytes(gguf: Any, shape: tuple[int, ...], qtype: Any) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def _encode(gguf: Any, array: np.ndarray, qtype: Any) -> np.ndarray:
    types = gguf.GGMLQuantizationType
    if qtype == types.F32:
        return array.astype(np.float32)
    if qtype == types.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, qtype)


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

        tensors = gguf_tensors(adapter, plans)
        stored = sum(math.prod(t.shape) for t in tensors)
        if rope["rope_type"] == "llama3":
            factors = _llama3_rope_factors(rope, head_dim, theta, int(config.max_position_embeddings))
            tensors.insert(0, GGUFTensor("rope_freqs.weight", tuple(factors.shape), lambda: factors))
        # every tensor's name, shape, type and offset go into the header first; then the data follows one tensor
        # (one decoder block) at a time, so no more than a block is held, in memory or block by block
        qtypes = [stored_type(gguf, t.shape, wanted) for t in tensors]
        for tensor, qtype in zip(tensors, qtypes, strict=True):
            writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32),
                                   stored_bytes(gguf, tensor.shape, qtype), raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor, qtype in zip(tensors, qtypes, strict=True):
            materialise(model, tensor.layer)
            writer.write_tensor_data(_encode(gguf, tensor.value(), qtype))
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


def _usage(files: list[str]) -> str:
    gguf = files[0] if files else "model.gguf"
    return f"""llama.cpp (the tokenizer is inside the file):

```bash
llama-cli -m {gguf} -p "Once upon a time" -n 64
llama-server -m {gguf}
```

llama-cpp-python:

```python
from llama_cpp import Llama
llm = Llama(model_path="{gguf}")
print(llm("Once upon a time", max_tokens=64)["choices"][0]["text"])
```"""


CARD = CardSection("gguf", _usage, tags=("gguf", "llama.cpp"), library_name="gguf", base_model_relation="quantized")


def export_gguf(
    model: Any, tokenizer: Any, out_dir: Path, metadata: dict[str, Any], options: BaseModel,
    source: ModelInput | None = None,
) -> dict[str, Any]:
    """The `gguf` export format: out_dir/model.gguf and the model card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weight_type = options.type  # type: ignore[attr-defined]
    summary = write_gguf(model, tokenizer, out_dir / GGUF_FILE, {**metadata, "gguf_type": weight_type}, weight_type,
                         options.ffn_multiple)  # type: ignore[attr-defined]
    write_card(out_dir, metadata, CARD, model.config, summary["files"], source)
    return summary
