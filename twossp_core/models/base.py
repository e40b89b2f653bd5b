"""The adapter contract: the only code that knows a family's module names.

Everything else in the library talks to a model through a `ModelAdapter`: where the blocks are, which
submodule is the attention or the FFN, how to slice FFN neurons, and how to turn hidden states into logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from twossp_core.export.remote_modeling import (
    STRUCTURE_KEY,
    RemovedAttention,
    RemovedMLP,
    apply_structure,
    needs_structure,
)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def slice_linear(linear: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping the given output rows (dim=0) or input columns (dim=1)."""
    weight = linear.weight.data.index_select(dim, keep.to(linear.weight.device)).clone()
    bias = None
    if linear.bias is not None:
        source = linear.bias.data
        bias = source.index_select(0, keep.to(source.device)).clone() if dim == 0 else source.clone()
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new


class ModelAdapter:
    """Default behaviour for pre-norm decoder-only models laid out like Llama."""

    attention_module: ClassVar[str] = "self_attn"
    mlp_module: ClassVar[str] = "mlp"
    attention_norms: ClassVar[tuple[str, ...]] = ("input_layernorm",)
    mlp_norms: ClassVar[tuple[str, ...]] = ("post_attention_layernorm",)
    down_proj: ClassVar[str] = "down_proj"
    up_projs: ClassVar[tuple[str, ...]] = ("gate_proj", "up_proj")
    # whether a block adds its FFN's output to the residual stream unchanged (no norm after the FFN)
    ffn_output_in_residual: ClassVar[bool] = True
    attention_projs: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "o_proj")  # separate q, k, v, o
    embedding_module: ClassVar[str] = "embed_tokens"  # on the decoder
    final_norm_module: ClassVar[str] = "norm"  # on the decoder
    head_module: ClassVar[str] = "lm_head"  # on the model

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config

    # ---- layout -------------------------------------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        return self.model.model

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def layers_prefix(self) -> str:
        """The layer list's name in the model and a dot, e.g. "model.layers.": the checkpoint stores block i's
        weights under this prefix, i and the parameter's name in the block."""
        for name, module in self.model.named_modules():
            if module is self.layers:
                return name + "."
        raise RuntimeError("the decoder's layer list is not a submodule of the model")

    @property
    def num_blocks(self) -> int:
        return len(self.layers)

    def attention(self, idx: int) -> nn.Module:
        return getattr(self.layers[idx], self.attention_module)

    def mlp(self, idx: int) -> nn.Module:
        return getattr(self.layers[idx], self.mlp_module)

    def attention_removed(self, idx: int) -> bool:
        return isinstance(self.attention(idx), RemovedAttention)

    def mlp_removed(self, idx: int) -> bool:
        return isinstance(self.mlp(idx), RemovedMLP)

    def down_projection(self, idx: int) -> nn.Module:
        """The module whose input is the FFN intermediate activation (scored by stage 1)."""
        return getattr(self.mlp(idx), self.down_proj)

    @property
    def intermediate_size(self) -> int:
        return int(self.config.intermediate_size)

    # ---- parameter counts ---------------------------------------------------------------------------
    def block_params(self, idx: int) -> int:
        return _count(self.layers[idx])

    def blocks_params(self) -> int:
        return sum(self.block_params(i) for i in range(self.num_blocks))

    def total_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())  # tied weights are counted once

    def attention_params(self, idx: int = 0) -> int:
        return _count(self.attention(idx))

    def mlp_params(self, idx: int = 0) -> int:
        return _count(self.mlp(idx))

    # ---- forward pieces -----------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return getattr(self.decoder, self.embedding_module)(input_ids)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The norm after the last block (the decoder's own output already includes it)."""
        return getattr(self.decoder, self.final_norm_module)(hidden)

    def head(self, normed: torch.Tensor) -> torch.Tensor:
        """LM head on final-normed hidden states."""
        return getattr(self.model, self.head_module)(normed)

    # ---- structural edits ---------------------------------------------------------------------------
    def slice_ffn(self, idx: int, keep: torch.Tensor) -> None:
        """Keep only the intermediate neurons `keep` (sorted indices) of block idx."""
        mlp = self.mlp(idx)
        for name in self.up_projs:
            setattr(mlp, name, slice_linear(getattr(mlp, name), keep, dim=0))
        setattr(mlp, self.down_proj, slice_linear(getattr(mlp, self.down_proj), keep, dim=1))

    def set_intermediate_size(self, size: int) -> None:
        self.config.intermediate_size = size

    def structure(self) -> dict[str, Any]:
        return dict(getattr(self.config, STRUCTURE_KEY, None) or {})

    def _record(self, key: str, idx: int) -> None:
        structure = self.structure()
        structure.setdefault("attention_module", self.attention_module)
        structure.setdefault("attention_norms", list(self.attention_norms))
        structure.setdefault("mlp_module", self.mlp_module)
        structure.setdefault("mlp_norms", list(self.mlp_norms))
        structure[key] = sorted(set(structure.get(key, [])) | {idx})
        setattr(self.config, STRUCTURE_KEY, structure)

    def remove_attention(self, idx: int) -> None:
        """Remove block idx's attention (its weights are freed); the residual path stays."""
        if self.attention_removed(idx):
            raise ValueError(f"attention of block {idx} is already removed")
        self._record("removed_attention", idx)
        apply_structure(self.model, {**self.structure(), "removed_attention": [idx], "removed_mlp": []})

    def remove_mlp(self, idx: int) -> None:
        if self.mlp_removed(idx):
            raise ValueError(f"FFN of block {idx} is already removed")
        self._record("removed_mlp", idx)
        apply_structure(self.model, {**self.structure(), "removed_attention": [], "removed_mlp": [idx]})

    def remove_blocks(self, indices: list[int]) -> None:
        """Physically delete whole blocks: the layer list, config.num_hidden_layers, per-layer config lists
        (layer_types) and every layer_idx are updated, so plain transformers loads the result."""
        drop = sorted(set(indices))
        if any(i < 0 or i >= self.num_blocks for i in drop):
            raise ValueError(f"block indices {drop} out of range for {self.num_blocks} blocks")
        if len(drop) >= self.num_blocks:
            raise ValueError("cannot remove every block")
        keep = [i for i in range(self.num_blocks) if i not in drop]
        new_index = {old: new for new, old in enumerate(keep)}
        layers = nn.ModuleList([self.layers[i] for i in keep])
        for new, layer in enumerate(layers):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = new
        self.decoder.layers = layers
        layer_types = getattr(self.config, "layer_types", None)
        if layer_types:
            self.config.layer_types = [layer_types[i] for i in keep]
        self.config.num_hidden_layers = len(keep)
        structure = self.structure()
        if structure:
            for key in ("removed_attention", "removed_mlp"):
                structure[key] = [new_index[i] for i in structure.get(key, []) if i in new_index]
            if needs_structure(structure):
                setattr(self.config, STRUCTURE_KEY, structure)
            else:  # nothing left that plain transformers cannot build
                delattr(self.config, STRUCTURE_KEY)

    def record_structure(self, **entries: Any) -> None:
        """Add entries to the structure config (what `apply_structure` rebuilds at load time)."""
        structure = self.structure()
        structure.setdefault("attention_module", self.attention_module)
        structure.setdefault("attention_norms", list(self.attention_norms))
        structure.setdefault("mlp_module", self.mlp_module)
        structure.setdefault("mlp_norms", list(self.mlp_norms))
        structure.update(entries)
        setattr(self.config, STRUCTURE_KEY, structure)

    @property
    def removed_attention(self) -> list[int]:
        return [i for i in range(self.num_blocks) if self.attention_removed(i)]

    @property
    def removed_mlp(self) -> list[int]:
        return [i for i in range(self.num_blocks) if self.mlp_removed(i)]

    @contextmanager
    def layers_replaced(self, layers: nn.ModuleList) -> Iterator[None]:
        """Temporarily run the decoder with other layer modules (as many as it has blocks)."""
        saved = self.decoder.layers
        self.decoder.layers = layers
        try:
            yield
        finally:
            self.decoder.layers = saved

    @contextmanager
    def bypassed(self, kind: Literal["attention", "mlp"], idx: int) -> Iterator[None]:
        """Temporarily run block idx without its attention or FFN (used to score removal candidates)."""
        layer = self.layers[idx]
        if kind == "attention":
            names, stand_in = (self.attention_module, *self.attention_norms), RemovedAttention(idx)
        else:
            names, stand_in = (self.mlp_module, *self.mlp_norms), RemovedMLP()
        saved = {name: getattr(layer, name) for name in names}
        setattr(layer, names[0], stand_in)
        for name in names[1:]:
            setattr(layer, name, nn.Identity())
        try:
            yield
        finally:
            for name, module in saved.items():
                setattr(layer, name, module)
