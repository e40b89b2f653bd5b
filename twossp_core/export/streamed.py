"""Write a model's weights as safetensors shards one decoder block at a time.

For a block-by-block (offloaded) model, whose blocks are never all in memory: the shard headers are computed
from the modules' shapes and dtypes before any data is written, then every tensor is streamed into its shard,
each block read (or re-read from its edited copy) just before its tensors are written. Shards follow the Hugging
Face layout (`model.safetensors`, or `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`),
so the directory loads with `from_pretrained`. `write_weights_by_block(model, directory)` writes them (the
`compact` and `portable` formats through `save.save_pruned`, `decilm` directly), in memory and block by block
alike; `materialise` is how the other writers (export/gguf.py) read a block before its tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from twossp_core.runtime.offload import offloader_of

SHARD_BYTES = 2 * 10**9
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
INDEX_FILE = "model.safetensors.index.json"


def materialise(model: nn.Module, layer: nn.Module | None) -> None:
    """Read `layer`, a decoder block of a block-by-block model, into memory (freeing the block there before); nothing
    for an in-memory model or a tensor of no block (`layer` None)."""
    offloader = offloader_of(model)
    if offloader is not None and layer is not None:
        offloader.ensure(layer)


def _owners(model: nn.Module, layers: nn.ModuleList) -> dict[str, nn.Module]:
    """Parameter name → the decoder layer it belongs to (absent for embeddings, final norm, head)."""
    owners: dict[str, nn.Module] = {}
    for prefix, module in model.named_modules():
        if module is layers:
            for idx, layer in enumerate(layers):
                for name, _ in layer.named_parameters():
                    owners[f"{prefix}.{idx}.{name}"] = layer
    return owners


def _header(entries: list[tuple[str, torch.dtype, tuple[int, ...], int]]) -> bytes:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


@torch.no_grad()
def write_weights_by_block(model: nn.Module, directory: Path, *, shard_bytes: int | None = None) -> list[str]:
    """Write every parameter of `model` (tied weights once) into `directory` in shards of at most `shard_bytes`
    (default SHARD_BYTES); returns the shard file names."""
    shard_bytes = shard_bytes or SHARD_BYTES
    offloader = offloader_of(model)
    layers = offloader.adapter.layers if offloader is not None else None
    owners = _owners(model, layers) if layers is not None else {}
    planned: list[tuple[str, torch.dtype, tuple[int, ...], int]] = []
    for name, param in model.named_parameters():  # meta parameters carry the shapes of the edited blocks
        planned.append((name, param.dtype, tuple(param.shape), param.numel() * param.element_size()))
    shards: list[list[tuple[str, torch.dtype, tuple[int, ...], int]]] = [[]]
    size = 0
    for entry in planned:
        if shards[-1] and size + entry[3] > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry[3]
    count = len(shards)
    names = ["model.safetensors"] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors"
                                                      for i in range(count)]
    weight_map: dict[str, str] = {}
    for file_name, shard in zip(names, shards, strict=True):
        header = _header(shard)
        with open(Path(directory) / file_name, "wb") as fh:
            fh.write(len(header).to_bytes(8, "little"))
            fh.write(header)
            for name, _, _, nbytes in shard:
                materialise(model, owners.get(name))
                tensor = model.get_parameter(name).detach().to("cpu").contiguous()
                if tensor.numel() * tensor.element_size() != nbytes:
                    raise RuntimeError(f"{name}: {tuple(tensor.shape)} does not match the planned shard entry")
                if tensor.numel():
                    fh.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
                weight_map[name] = file_name
    if count > 1:
        total = sum(e[3] for e in planned)
        (Path(directory) / INDEX_FILE).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    return names
