"""Write a pruned model as a Hugging Face directory that loads again, with or without twossp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from twossp_core.export import remote_modeling
from twossp_core.export.card import CardSection, write_card
from twossp_core.export.compact_config import BASE_KEY, MODELING_FILE, to_compact
from twossp_core.export.remote_modeling import STRUCTURE_KEY, needs_structure
from twossp_core.export.source_files import source_json
from twossp_core.export.staging import staged_into
from twossp_core.export.streamed import write_weights_by_block
from twossp_core.export.tokenizer_files import save_tokenizer
from twossp_core.plan.sources import ModelInput
from twossp_core.runtime.offload import offloader_of

BASE_LINE_MARK = "# twossp:base-class"


def modeling_source(base_architecture: str) -> str:
    """remote_modeling.py with its base class bound to the model's transformers architecture."""
    source = Path(remote_modeling.__file__).read_text()
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().endswith(BASE_LINE_MARK):
            lines[i] = f"from transformers import {base_architecture} as _Base  {BASE_LINE_MARK}"
            break
    else:  # pragma: no cover - guarded by tests
        raise RuntimeError("base-class marker missing from remote_modeling.py")
    return "\n".join(lines) + "\n"


def with_source_use_cache(config: dict[str, Any], source: ModelInput | str) -> dict[str, Any]:
    """`config` with the source model's `use_cache` (loading for pruning turns the cache off); without the source's
    config at hand, the architecture's default."""
    use_cache = source_json(source, "config.json").get("use_cache")
    config = {k: v for k, v in config.items() if k != "use_cache"}
    return config if use_cache is None else {**config, "use_cache": use_cache}


def save_pruned(
    model: Any, tokenizer: Any, out_dir: Path, metadata: dict[str, Any], source: ModelInput | None = None
) -> Path:
    """Save into `out_dir` atomically: files are written to a temporary sibling, then moved in place. `source`: the
    model pruned (the metadata's `model`) with where it is opened, when not at its name; its files give the
    tokenizer's settings and use_cache.

    Existing files in out_dir with the same names are replaced; nothing partial is left on failure.
    A block-by-block (offloaded) model is written shard by shard, one block in memory at a time (export.streamed).
    """
    out_dir = Path(out_dir)
    with staged_into(out_dir) as tmp:
        if offloader_of(model) is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None and model.can_generate():
                model.generation_config.save_pretrained(tmp)
            write_weights_by_block(model, tmp)
        source_model = source if source is not None else ModelInput(str(metadata.get("model") or ""))
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, source_model)
        config_path = tmp / "config.json"
        config = with_source_use_cache(json.loads(config_path.read_text()), source_model)
        config["twossp"] = metadata
        if needs_structure(config.get(STRUCTURE_KEY)):
            config = to_compact(config)  # its own model_type: never loads as the base architecture
            (tmp / MODELING_FILE).write_text(modeling_source(config[BASE_KEY]["architecture"]))
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


USAGE = """twossp:

```python
from twossp_core.export.load import load_pruned
model, tokenizer = load_pruned("THIS_DIR")
```

or transformers with the `modeling_twossp.py` shipped here (the tokenizer needs no code, and given the model's config
AutoTokenizer does not ask about the directory's code again):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("THIS_DIR", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("THIS_DIR", config=model.config)
```"""
CARD = CardSection("compact", lambda files: USAGE, tags=("custom_code",))


def export_compact(
    model: Any, tokenizer: Any, out_dir: Path, metadata: dict[str, Any], options: BaseModel,
    source: ModelInput | None = None,
) -> dict[str, Any]:
    """The `compact` export format: only what remains, with modeling_twossp.py to rebuild it."""
    from twossp_core.models.registry import adapter_for

    save_pruned(model, tokenizer, out_dir, metadata, source)
    write_card(out_dir, metadata, CARD, model.config, source=source)
    return {"stored_params": adapter_for(model).total_params()}
