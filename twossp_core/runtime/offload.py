"""Block-by-block execution: a model whose decoder blocks live in their safetensors files, not in memory.

`load_block_by_block` builds the model's modules on the meta device (no memory), then reads the embeddings, the
final norm and the LM head onto the compute device; every decoder block stays on the meta device. An
`Offloader` attached to the model reads a block's weights onto the device just before the block runs (a forward
pre-hook) and frees the block that was there before, so one block is in memory at a time and every forward
pass in the library works unchanged, with the same arithmetic as the in-memory model.

Structural edits keep working: removing a submodule or a whole block needs no weights (the removed modules'
stored weights are simply not read again), and edits that change weights (slicing FFN neurons) run inside
`editing_block`, which reads the block, lets the edit run, and writes the edited block to a scratch file when
the block leaves memory. Forward passes over many windows should go block by block rather than window by window
(twossp_core/runtime/sequential.py), so every block is read once per pass instead of once per window.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from twossp_core.errors import ModelNotFound
from twossp_core.models.base import ModelAdapter
from twossp_core.plan.sources import ModelInput
from twossp_core.runtime.tensor_files import TensorEntry, index_directory, read_header, read_tensor

OFFLOADER_ATTR = "_twossp_offloader"
BLOCK_KEY_ATTR = "_twossp_block"  # a layer's index in the loaded checkpoint (kept when blocks are deleted)


def offloader_of(model: nn.Module) -> Offloader | None:
    return getattr(model, OFFLOADER_ATTR, None)


def is_offloaded(adapter: ModelAdapter) -> bool:
    return offloader_of(adapter.model) is not None


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 1 << 20


def return_freed_blocks_to_the_os() -> bool:
    """Make glibc serve allocations of 1 MiB and more with their own memory maps, so a freed block goes back to
    the operating system at once. By default glibc raises this threshold (up to 32 MiB) each time such a buffer is
    freed, after which block-sized tensors come from the heap and the freed ones stay in the process: measured on
    an 8-block model, a prune's peak RSS grew by almost the whole model instead of under two blocks. Process-wide;
    False where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def _set_parameter(root: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    owner._parameters[attr] = nn.Parameter(value, requires_grad=False)


class Offloader:
    """Keeps at most one decoder block of `adapter` materialised on `device`."""

    def __init__(self, adapter: ModelAdapter, entries: dict[str, TensorEntry], prefix: str,
                 device: torch.device) -> None:
        self.adapter = adapter
        self.entries = entries
        self.prefix = prefix  # checkpoint name of the layer list, e.g. "model.layers."
        self.device = device
        self.edited: dict[int, dict[str, TensorEntry]] = {}
        self.resident: nn.Module | None = None
        self.dirty = False
        self.block_reads = 0
        self.window_budget: int | None = None  # windows a block-by-block pass may hold (from the memory plan)
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        return_freed_blocks_to_the_os()
        for idx, layer in enumerate(adapter.layers):
            setattr(layer, BLOCK_KEY_ATTR, idx)
            layer.register_forward_pre_hook(self._before_forward)
        setattr(adapter.model, OFFLOADER_ATTR, self)

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        self.ensure(module)

    def ensure(self, layer: nn.Module) -> None:
        """Make `layer` the materialised block (freeing the previous one first)."""
        if layer is self.resident:
            return
        self.release()
        key = getattr(layer, BLOCK_KEY_ATTR)
        self._read_into(layer, self.edited.get(key))
        self.resident = layer

    def _read_into(self, layer: nn.Module, edited: dict[str, TensorEntry] | None = None) -> None:
        """Read a block's weights onto the device: its edited copy when given, else the checkpoint's."""
        key = getattr(layer, BLOCK_KEY_ATTR)
        for name, param in list(layer.named_parameters()):
            entry = edited.get(name) if edited is not None else self.entries.get(f"{self.prefix}{key}.{name}")
            if entry is None:
                raise ModelNotFound(f"block {key}: the checkpoint has no weights for {name}")
            if tuple(entry.shape) != tuple(param.shape):
                raise RuntimeError(
                    f"block {key}: stored {name} has shape {entry.shape}, the module {tuple(param.shape)}")
            _set_parameter(layer, name, read_tensor(entry).to(device=self.device, dtype=param.dtype))
        self.block_reads += 1

    def release(self) -> None:
        """Free the materialised block, writing it to the scratch folder first if it was edited."""
        layer = self.resident
        if layer is None:
            return
        if self.dirty:
            self._write_back(layer)
            self.dirty = False
        layer.to("meta")
        self.resident = None

    def _write_back(self, layer: nn.Module) -> None:
        from safetensors.torch import save_file

        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="twossp-blocks-")
        key = getattr(layer, BLOCK_KEY_ATTR)
        path = Path(self._scratch.name) / f"block-{key}.safetensors"
        save_file({n: p.detach().to("cpu").contiguous() for n, p in layer.named_parameters()}, str(path))
        self.edited[key] = read_header(path)

    @contextmanager
    def editing(self, layer: nn.Module) -> Iterator[None]:
        self.ensure(layer)
        yield
        if self.resident is not layer:
            raise RuntimeError("a block left memory while it was being edited")
        self.dirty = True

    def structure_copy(self, layer: nn.Module) -> nn.Module:
        """A copy of a block's modules on the meta device (no weights, no offloading hook), to read the block's
        original weights into later (`read_original`) whatever edits the block gets meanwhile."""
        if layer is self.resident:
            self.release()
        hooks = layer._forward_pre_hooks
        layer._forward_pre_hooks = type(hooks)()
        try:
            return copy.deepcopy(layer)
        finally:
            layer._forward_pre_hooks = hooks

    def read_original(self, structure: nn.Module) -> nn.Module:
        """A new block with `structure`'s modules and the checkpoint's weights for it (edits ignored), on the
        device; it is not managed by the offloader (the caller frees it)."""
        block = copy.deepcopy(structure)
        self._read_into(block)
        return block

    def block_state(self, layer: nn.Module) -> dict[str, torch.Tensor]:
        """The block's current weights (it becomes the materialised block)."""
        self.ensure(layer)
        return dict(layer.named_parameters())

    def close(self) -> None:
        self.release()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def editing_block(adapter: ModelAdapter, idx: int) -> Any:
    """Context for an edit of block idx's weights: a no-op in memory; block by block, the block is read first
    and its edited weights are kept (in a scratch file) when it leaves memory."""
    offloader = offloader_of(adapter.model)
    return nullcontext() if offloader is None else offloader.editing(adapter.layers[idx])


def local_model_dir(source: ModelInput | str) -> Path:
    """The directory holding the model's files: where `source` says to open it, or downloaded from the hub when it
    is not a local path."""
    model_input = ModelInput.of(source)
    model_id, local = model_input.name, model_input.open_path
    if local.exists():
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:  # the hub client raises many types; the user needs the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(f"cannot download {model_id!r}: {first}") from None


def block_prefix(source: ModelInput | str) -> str:
    """The checkpoint name prefix of a model's decoder blocks (e.g. "model.layers."), from its family's adapter on
    the model built on the meta device from its config (no weights are read)."""
    from twossp_core.models.registry import adapter_for, check_supported
    from twossp_core.runtime.loading import empty_model, load_config
    from twossp_core.runtime.quiet import quiet_transformers

    quiet_transformers()
    config = load_config(str(local_model_dir(source)))
    check_supported(getattr(config, "model_type", None))
    return adapter_for(empty_model(ModelInput.of(source).name, config, torch.float32)).layers_prefix


@torch.no_grad()
def load_block_by_block(
    source: ModelInput | str, *, dtype: str = "float32", device: str = "cpu",
    entries: dict[str, TensorEntry] | None = None,
) -> tuple[Any, Any]:
    """(model with offloaded blocks, tokenizer), read where `source` says to open it: see the module docstring.
    `entries`: the model's safetensors index when the caller has read it already (`index_directory`)."""
    from transformers import AutoTokenizer

    from twossp_core.models.registry import adapter_for, check_supported
    from twossp_core.runtime.devices import resolve_device, resolve_dtype
    from twossp_core.runtime.loading import empty_model, load_config
    from twossp_core.runtime.quiet import quiet_transformers

    quiet_transformers()
    model_id = ModelInput.of(source).name
    local = local_model_dir(source)
    config = load_config(str(local))
    check_supported(getattr(config, "model_type", None))
    torch_dtype, target = resolve_dtype(dtype), resolve_device(device)
    if entries is None:
        entries = index_directory(local)
    model = empty_model(model_id, config, torch_dtype)
    adapter = adapter_for(model)
    in_blocks = {id(m) for m in adapter.layers.modules()}
    for module in model.modules():  # non-persistent buffers (rotary tables, embedding scales) are computed
        if id(module) not in in_blocks and any(b.is_meta for b in module.buffers(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
            model._init_weights(module)
    block_params = {id(p) for p in adapter.layers.parameters()}
    for name, param in list(model.named_parameters()):
        if id(param) in block_params:
            continue
        entry = entries.get(name)
        if entry is None:
            continue  # a tied weight (checked below, after tying)
        _set_parameter(model, name, read_tensor(entry).to(device=target, dtype=param.dtype))
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    for module in model.modules():
        if id(module) not in in_blocks:
            for bname, buf in list(module._buffers.items()):
                if buf is not None:
                    module._buffers[bname] = buf.to(target)
    block_params = {id(p) for p in adapter.layers.parameters()}
    left = [n for n, p in model.named_parameters() if p.is_meta and id(p) not in block_params]
    if left:
        raise ModelNotFound(f"{model_id}: weights not found in the checkpoint: {', '.join(left[:5])}")
    model.eval()
    model.config.use_cache = False
    model.config._name_or_path = model_id  # as from_pretrained records it (saved configs carry it)
    Offloader(adapter, entries, adapter.layers_prefix, target)
    tokenizer = AutoTokenizer.from_pretrained(str(local), trust_remote_code=False)
    tokenizer.model_max_length = int(1e30)
    return model, tokenizer
