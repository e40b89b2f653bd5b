"""LoRA heals through peft: adapters on the blocks' linear layers, merged back into the weights at the end."""

from __future__ import annotations

from typing import Any

from torch import nn

from twossp_core.errors import InvalidSpec
from twossp_core.models.registry import adapter_for
from twossp_core.plan.heal_config import HealConfig


def block_linear_names(model: nn.Module) -> list[str]:
    """Full names of every nn.Linear inside the transformer blocks (never the embeddings or the LM head)."""
    adapter = adapter_for(model)
    layers = {id(layer) for layer in adapter.layers}
    names: list[str] = []
    for name, module in model.named_modules():
        if id(module) in layers:
            names.extend(f"{name}.{sub}" for sub, child in module.named_modules() if isinstance(child, nn.Linear))
    return names


def wrap_lora(model: nn.Module, config: HealConfig) -> Any:
    """The model with trainable LoRA adapters (every other weight frozen)."""
    from peft import LoraConfig, get_peft_model

    linears = block_linear_names(model)
    if config.lora_targets is None:
        targets = linears
    else:
        targets = [n for n in linears if any(n == t or n.endswith(f".{t}") for t in config.lora_targets)]
        if not targets:
            raise InvalidSpec(f"heal lora_targets {config.lora_targets} match no linear layer of the pruned blocks")
    if not targets:
        raise InvalidSpec("the pruned model has no linear layer left in its blocks for LoRA to adapt")
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=targets,
                      bias="none")
    return get_peft_model(model, lora)


def merge_lora(peft_model: Any) -> nn.Module:
    """Fold the adapters into the base weights and return the plain base model (no peft module left)."""
    return peft_model.merge_and_unload()
