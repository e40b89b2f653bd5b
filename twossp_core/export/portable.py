"""Portable export: give a pruned model back the plain layout of its base architecture, so that any runtime that
reads that architecture (plain transformers without remote code, serving engines, converters) can load it.

Every removed attention or FFN submodule is rebuilt as the base architecture's own module with all parameters
zero: its output is exactly zero, as the removal's was, so the logits do not change. The FFN slicing (one width
for every block) and deleted blocks are plain already. The price is storing the rebuilt submodules (reported);
a rotated-and-sliced residual stream (SliceGPT) has no plain equivalent.

Block by block (runtime/offload.py), each rebuilt block is an edit like FFN slicing: the block is read, gets its
zero submodules, and goes to the scratch file when it leaves memory; the shards are then written one block at a
time (export/streamed.py), so the export holds about one block, never the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from twossp_core.errors import InvalidSpec
from twossp_core.export.card import CardSection
from twossp_core.export.remote_modeling import SHORTCUT_KEY, STRUCTURE_KEY, decoder_layers
from twossp_core.plan.sources import ModelInput
from twossp_core.runtime.offload import editing_block

KINDS = ("attention", "mlp")


class NotPortable(InvalidSpec):
    """The pruned structure cannot be written as the plain base architecture."""


@torch.no_grad()
def make_portable(model: Any) -> None:
    """Rebuild the removed submodules of `model` in place as zero-output modules and drop the pruned structure
    from its config."""
    structure = dict(getattr(model.config, STRUCTURE_KEY, None) or {})
    if structure.get(SHORTCUT_KEY):
        raise NotPortable("a rotated-and-sliced model (slicegpt) has no plain equivalent; export it as 'compact'")
    from twossp_core.models.registry import adapter_for

    adapter = adapter_for(model)
    layers = decoder_layers(model)
    ref = next(p for p in model.parameters() if not p.is_meta)  # block by block, the blocks' are on meta
    for kind in KINDS:
        names = [structure.get(f"{kind}_module"), *structure.get(f"{kind}_norms", [])]
        for idx in structure.get(f"removed_{kind}", []):
            layer = layers[idx]
            with editing_block(adapter, idx):
                fresh = type(layer)(model.config, idx).to(device=ref.device, dtype=ref.dtype)
                module = getattr(fresh, names[0])
                for param in module.parameters():
                    param.zero_()
                for name in names:
                    setattr(layer, name, getattr(fresh, name))
    if hasattr(model.config, STRUCTURE_KEY):
        delattr(model.config, STRUCTURE_KEY)


USAGE = """Any runtime that reads the base architecture (no remote code):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("THIS_DIR")
tokenizer = AutoTokenizer.from_pretrained("THIS_DIR")
```

The removed submodules are stored as zeros, so this runs at the speed of the dense model; the `gguf` and
`decilm` exports skip them."""
CARD = CardSection("portable", lambda files: USAGE)


def export_portable(
    model: Any, tokenizer: Any, out_dir: Path, metadata: dict[str, Any], options: BaseModel,
    source: ModelInput | None = None,
) -> dict[str, Any]:
    """The `portable` export format: the plain base architecture (the model is changed in place)."""
    from twossp_core.export.card import write_card
    from twossp_core.export.save import save_pruned
    from twossp_core.models.registry import adapter_for

    make_portable(model)
    save_pruned(model, tokenizer, out_dir, metadata, source)
    write_card(out_dir, metadata, CARD, model.config, source=source)
    return {"stored_params": adapter_for(model).total_params()}
