"""The `decilm` export format: a Hugging Face directory in the DeciLM / Nemotron-NAS layout.

`config.json` names `DeciLMForCausalLM` with one `block_configs` entry per layer (the layout vLLM's
`nemotron_nas` implementation reads, and llama.cpp's converter for `deci`): a removed attention is
`attention.no_op` (`n_heads_in_group` null), a removed FFN `ffn.no_op` (`ffn_mult` null), a kept FFN of width W
has `ffn_mult = 3W / (2 · hidden)`. The runtimes recover W as `int(2 · ffn_mult · hidden / 3)` rounded up to a
multiple of 256, so only widths that are multiples of 256 are exact; any other width is refused (2SSP:
`round_to=256`). The weights keep Llama's names; `configuration_decilm.py` and `modeling_decilm.py` (from
`decilm_code/`) make the directory loadable by transformers with `trust_remote_code=True`. The weights are written
shard by shard (export/streamed.py, Hugging Face shard names and index), one decoder block at a time for a
block-by-block model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from twossp_core.errors import InvalidSpec
from twossp_core.export import decilm_code
from twossp_core.export.card import CardSection, write_card
from twossp_core.export.context import exported_context
from twossp_core.export.decilm_code.configuration_decilm import ffn_mult_to_intermediate_size
from twossp_core.export.remote_modeling import SHORTCUT_KEY, STRUCTURE_KEY
from twossp_core.plan.exports import check_ffn_width
from twossp_core.plan.sources import ModelInput

CODE_FILES = ("configuration_decilm.py", "modeling_decilm.py")
ARCHITECTURE = "DeciLMForCausalLM"
MODEL_TYPE = "nemotron-nas"
DROPPED_KEYS = (STRUCTURE_KEY, "auto_map", "architectures", "model_type", "twossp", "transformers_version")


def ffn_mult(width: int, hidden: int) -> float:
    """The `ffn_mult` whose DeciLM width is exactly `width` (a multiple of 256)."""
    mult = 3 * width / (2 * hidden)
    if ffn_mult_to_intermediate_size(mult, hidden) != width:  # pragma: no cover - widths are checked first
        raise InvalidSpec(f"export 'decilm': FFN width {width} has no exact ffn_mult for hidden size {hidden}")
    return mult


def block_configs(adapter: Any) -> list[dict[str, Any]]:
    """One DeciLM block entry per layer of the pruned model; refuses widths DeciLM cannot represent."""
    config = adapter.config
    heads = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    blocks = []
    for idx in range(adapter.num_blocks):
        attention: dict[str, Any] = {"no_op": True, "n_heads_in_group": None, "replace_with_linear": False}
        if not adapter.attention_removed(idx):
            kv = getattr(adapter.attention(idx), adapter.attention_projs[1]).out_features // head_dim
            attention.update(no_op=False, n_heads_in_group=heads // kv)
        ffn: dict[str, Any] = {"no_op": True, "ffn_mult": None, "replace_with_linear": False}
        if not adapter.mlp_removed(idx):
            width = int(getattr(adapter.mlp(idx), adapter.down_proj).in_features)
            check_ffn_width("decilm", width, hint=" (2SSP: set `options.round_to=256`)")
            ffn.update(no_op=False, ffn_mult=ffn_mult(width, hidden))
        blocks.append({"attention": attention, "ffn": ffn})
    return blocks


def decilm_config(model: Any, adapter: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    base = model.config.to_dict()
    blocks = block_configs(adapter)
    widths = [
        ffn_mult_to_intermediate_size(b["ffn"]["ffn_mult"], int(model.config.hidden_size))
        for b in blocks if not b["ffn"]["no_op"]
    ]
    config = {k: v for k, v in base.items() if k not in DROPPED_KEYS}
    config.update(
        architectures=[ARCHITECTURE],
        model_type=MODEL_TYPE,
        auto_map={
            "AutoConfig": "configuration_decilm.DeciLMConfig",
            "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM",
        },
        num_hidden_layers=len(blocks),
        intermediate_size=max(widths) if widths else int(model.config.intermediate_size),
        block_configs=blocks,
        twossp=metadata,
    )
    context, window_cap = exported_context(model.config)
    if window_cap is not None:
        config.update(max_position_embeddings=context, sliding_window=None)
    return config


USAGE = """vLLM (the `nemotron_nas` DeciLM implementation reads `block_configs`):

```bash
vllm serve THIS_DIR --trust-remote-code
```

transformers (runs `modeling_decilm.py` shipped here; the tokenizer needs no code, and given the model's config
AutoTokenizer does not ask about the directory's code again):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("THIS_DIR", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("THIS_DIR", config=model.config)
```"""
CARD = CardSection("decilm", lambda files: USAGE, tags=("custom_code", "nemotron-nas", "vllm"))


def export_decilm(
    model: Any, tokenizer: Any, out_dir: Path, metadata: dict[str, Any], options: BaseModel,
    source: ModelInput | None = None,
) -> dict[str, Any]:
    """Write config.json, model.safetensors, the tokenizer, the two code files and the model card."""
    from twossp_core.export.save import with_source_use_cache
    from twossp_core.export.staging import staged_into
    from twossp_core.export.streamed import write_weights_by_block
    from twossp_core.export.tokenizer_files import save_tokenizer
    from twossp_core.models.registry import adapter_for

    if (getattr(model.config, STRUCTURE_KEY, None) or {}).get(SHORTCUT_KEY):
        raise InvalidSpec("export 'decilm' cannot hold a rotated-and-sliced model (slicegpt); use 'compact'")
    adapter = adapter_for(model)
    source_model = source if source is not None else ModelInput(str(metadata.get("model") or ""))
    config = with_source_use_cache(decilm_config(model, adapter, metadata), source_model)
    out_dir = Path(out_dir)
    with staged_into(out_dir) as tmp:
        write_weights_by_block(model, tmp)  # tied embeddings once, as the embedding (DeciLM ties lm_head to it)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(tmp)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, source_model)
        code_dir = Path(decilm_code.__file__).parent
        for name in CODE_FILES:
            shutil.copyfile(code_dir / name, tmp / name)
    write_card(out_dir, metadata, CARD, model.config, source=source)
    context = config["max_position_embeddings"]
    return {"stored_params": adapter.total_params(), "layers": len(config["block_configs"]),
            "context_length": context,
            "context_capped_by_sliding_window": context != model.config.max_position_embeddings}
