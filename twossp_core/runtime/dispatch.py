"""Multi-device execution: the whole model in memory, its parts on several devices (accelerate's dispatch).

`load_multi_device` turns the memory plan's placement (twossp_core/plan/placement.py: the embeddings, each decoder
block, the final norm and the LM head on a device) into an accelerate `device_map` of the model's module names and
loads the checkpoint with it: transformers reads every tensor straight onto its module's device, and accelerate's
hooks (`AlignDevicesHook`) move a module's inputs to its device when it is called. The hidden states therefore move
to the next device at every block boundary, the masks and rotary embeddings the decoder computes on the first
device follow each block, and the logits come out on the LM head's device. transformers attaches the hooks when the
map names several devices; with one (a single GPU, or the CPU) it would only move the model there, so the hooks are
attached here (`force_hooks`): every map runs the same hooked forward passes.

The library's own code follows each part's device where it combines tensors: the NLL moves the targets to the
logits' device, stage 1's neuron scores are summed on the device of the calibration windows, BlockRunner records a
block's input where the block before it ran (its hook moves it).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from twossp_core.plan.placement import Placement
from twossp_core.plan.sources import ModelInput


def accelerate_device(name: str) -> int | str:
    """accelerate's form of a device: a CUDA index or "cpu"."""
    device = torch.device(name)
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    return device.type


def device_map(model: nn.Module, placement: Placement) -> dict[str, int | str]:
    """Module name -> device for every module of `model` that holds tensors: each decoder block on its block's
    device, the embeddings, final norm and LM head on theirs, anything else (rotary tables, dropout) with the
    embeddings (where the decoder computes the masks and positions)."""
    from twossp_core.models.registry import adapter_for

    adapter = adapter_for(model)
    blocks = placement.block_devices()
    if len(blocks) != adapter.num_blocks:
        raise RuntimeError(f"the placement has {len(blocks)} blocks, the model {adapter.num_blocks}")
    first = placement.device_of("embeddings")
    parts = {
        id(adapter.layers): None,  # one entry per block
        id(getattr(adapter.decoder, adapter.embedding_module)): first,
        id(getattr(adapter.decoder, adapter.final_norm_module)): placement.device_of("final norm"),
        id(getattr(adapter.model, adapter.head_module)): placement.device_of("LM head"),
    }
    above = set()  # the modules that contain a part: their children are mapped one by one
    names = dict(model.named_modules())
    for name, module in names.items():
        if id(module) in parts:
            path = name.split(".")
            above |= {".".join(path[:i]) for i in range(len(path))}
    mapping: dict[str, int | str] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}{child_name}"
            if child is adapter.layers:
                for idx in range(len(adapter.layers)):
                    mapping[f"{name}.{idx}"] = accelerate_device(blocks[idx])
            elif id(child) in parts:
                mapping[name] = accelerate_device(str(parts[id(child)]))
            elif name in above:
                visit(child, f"{name}.")
            else:
                mapping[name] = accelerate_device(first)

    visit(model, "")
    return mapping


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate's hooks run the model (the top-level hook returns outputs on the inputs' device)."""
    return hasattr(model, "_hf_hook")


def load_multi_device(source: ModelInput | str, *, dtype: str, placement: Placement) -> tuple[Any, Any]:
    """(model dispatched over the placement's devices, tokenizer), read where `source` says to open it: see the
    module docstring."""
    from accelerate import dispatch_model

    from twossp_core.models.registry import adapter_for
    from twossp_core.runtime.devices import resolve_dtype
    from twossp_core.runtime.loading import empty_model, load_config, load_model
    from twossp_core.runtime.quiet import quiet_transformers

    quiet_transformers()
    model_input = ModelInput.of(source)
    mapping = device_map(empty_model(model_input.name, load_config(model_input), resolve_dtype(dtype)), placement)
    model, tokenizer = load_model(model_input, dtype=dtype, device_map=mapping)
    if not hasattr(adapter_for(model).layers[0], "_hf_hook"):  # one device: transformers attached no hooks
        # accelerate warns of parameters "offloaded to the cpu" for any map naming the CPU, even when the CPU is
        # where they compute (nothing is offloaded then)
        quiet = logging.getLogger("accelerate.big_modeling")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            dispatch_model(model, device_map=mapping, main_device=accelerate_device(placement.device_of("embeddings")),
                           force_hooks=True, skip_keys=getattr(model, "_skip_keys_device_placement", None))
        finally:
            quiet.setLevel(level)
    if set(mapping.values()) == {"cpu"}:
        # transformers saves a model whose map names the CPU as an offloaded one (another path, with a warning);
        # nothing is offloaded here, and a map of GPUs is saved the ordinary way
        del model.hf_device_map
    return model, tokenizer
