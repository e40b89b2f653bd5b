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
from transformers import PreTrainedModel as _Base  # twossp:base-class

STRUCTURE_KEY = "twossp_structure"


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


class TwosspPrunedForCausalLM(_Base):
    """The base architecture with the removed submodules taken out at construction time."""

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
