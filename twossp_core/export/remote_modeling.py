"""Structural edits of a pruned model, self-contained so an exported model can carry this file.

An exported directory holds a copy of this module (as `modeling_twossp.py`) with the base class
line rewritten, so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` works with plain
transformers. The library uses the same functions directly, so both loading paths share one definition.
Only torch and transformers may be imported here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers import PreTrainedModel as _Base  # twossp:base-class

STRUCTURE_KEY = "twossp_structure"
SHORTCUT_KEY = "shortcut_rotation"  # structure entry: {"dim": sliced hidden size} (rotated-and-sliced models)
_LAYER_ARGS = ("attention_mask", "position_ids", "past_key_values", "use_cache", "position_embeddings")


class RemovedAttention(nn.Module):
    """Stands where an attention submodule was removed: contributes nothing to the residual stream."""

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


class RemovedMLP(nn.Module):
    """Stands where an FFN submodule was removed."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def needs_structure(structure: dict[str, Any] | None) -> bool:
    """Whether `structure` changes anything the base architecture builds (removed submodules, rotations)."""
    structure = structure or {}
    return bool(structure.get("removed_attention") or structure.get("removed_mlp") or structure.get(SHORTCUT_KEY))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return inner.layers


def apply_structure(model: nn.Module, structure: dict[str, Any]) -> None:
    """Replace removed submodules (and the norms that only fed them) as `structure` describes."""
    layers = decoder_layers(model)
    for idx in structure.get("removed_attention", []):
        layer = layers[idx]
        setattr(layer, structure["attention_module"], RemovedAttention(idx))
        for norm in structure.get("attention_norms", []):
            setattr(layer, norm, nn.Identity())
    for idx in structure.get("removed_mlp", []):
        layer = layers[idx]
        setattr(layer, structure["mlp_module"], RemovedMLP())
        for norm in structure.get("mlp_norms", []):
            setattr(layer, norm, nn.Identity())
    if structure.get(SHORTCUT_KEY):
        add_shortcut_rotations(model, structure)


def _shortcut_forward(self: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A pre-norm block whose residual stream changes basis twice: before adding the attention output
    (attn_shortcut) and before adding the FFN output (mlp_shortcut)."""
    kwargs.update(zip(_LAYER_ARGS, args, strict=False))
    attn_name, attn_norm, mlp_name, mlp_norm = self.twossp_shortcut_names
    h = getattr(self, attn_norm)(hidden_states) if attn_norm else hidden_states
    attn_out = getattr(self, attn_name)(hidden_states=h, **kwargs)[0]
    hidden_states = hidden_states @ self.attn_shortcut.to(hidden_states.dtype) + attn_out
    h = getattr(self, mlp_norm)(hidden_states) if mlp_norm else hidden_states
    mlp_out = getattr(self, mlp_name)(h)
    return hidden_states @ self.mlp_shortcut.to(hidden_states.dtype) + mlp_out


_SHORTCUT_CLASSES: dict[type, type] = {}


def shortcut_layer_class(base: type) -> type:
    """A subclass of a decoder-layer class whose forward applies the shortcut rotations."""
    if getattr(base, "twossp_shortcut", False):
        return base
    if base not in _SHORTCUT_CLASSES:
        attrs = {"forward": _shortcut_forward, "twossp_shortcut": True, "__module__": base.__module__}
        _SHORTCUT_CLASSES[base] = type(base.__name__, (base,), attrs)
    return _SHORTCUT_CLASSES[base]


def add_shortcut_rotations(model: nn.Module, structure: dict[str, Any]) -> None:
    """Give every block (dim x dim) shortcut matrices (identity until set or loaded) and the rotated forward."""
    dim = int(structure[SHORTCUT_KEY]["dim"])
    names = (
        structure.get("attention_module", "self_attn"),
        (structure.get("attention_norms") or [None])[0],
        structure.get("mlp_module", "mlp"),
        (structure.get("mlp_norms") or [None])[0],
    )
    for layer in decoder_layers(model):
        ref = next(layer.parameters())
        for name in ("attn_shortcut", "mlp_shortcut"):
            if not isinstance(getattr(layer, name, None), nn.Parameter):
                eye = torch.eye(dim, dtype=ref.dtype, device=ref.device)
                layer.register_parameter(name, nn.Parameter(eye, requires_grad=False))
        layer.twossp_shortcut_names = names
        layer.__class__ = shortcut_layer_class(type(layer))


_BaseConfig = _Base.config_class or PretrainedConfig


class TwosspPrunedConfig(_BaseConfig):
    """The base architecture's config under its own model_type, so that transformers builds a compact export only
    through this file (never as the base architecture, which would re-create the removed modules at random)."""

    model_type = "twossp_" + (_BaseConfig.model_type or "")


class TwosspPrunedForCausalLM(_Base):
    """The base architecture with the removed submodules taken out at construction time."""

    config_class = TwosspPrunedConfig

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        apply_structure(self, getattr(config, STRUCTURE_KEY, None) or {})


_PRUNED_CLASSES: dict[type, type] = {}


def pruned_class(base: type) -> type:
    """A subclass of `base` (e.g. LlamaForCausalLM) that builds the pruned structure from its config."""
    if base not in _PRUNED_CLASSES:

        def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
            base.__init__(self, config, *args, **kwargs)
            apply_structure(self, getattr(config, STRUCTURE_KEY, None) or {})

        _PRUNED_CLASSES[base] = type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__})
    return _PRUNED_CLASSES[base]
