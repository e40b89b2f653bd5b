"""The tokenizer files of an export: the tokenizer as loaded, with the settings it had in the source model.

Loading for pruning changes a tokenizer (an unbounded model_max_length, so long calibration text does not warn) and
transformers records loading arguments in it; an export writes the source's values back and never an `auto_map`
(no export's tokenizer needs code from the directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twossp_core.export.source_files import source_json
from twossp_core.plan.sources import ModelInput

CONFIG_FILE = "tokenizer_config.json"
LOADING_KEYS = ("is_local", "local_files_only", "auto_map", "_commit_hash", "name_or_path")
# kept as the source wrote them (tokenizer_class: the name older transformers releases know)
SOURCE_KEYS = ("model_max_length", "tokenizer_class")


def save_tokenizer(tokenizer: Any, directory: Path, source: ModelInput | str) -> None:
    """Save `tokenizer` into `directory`, with the source model's settings (read where `source` is opened)."""
    tokenizer.save_pretrained(directory)
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    original = source_json(source, CONFIG_FILE)
    for key in LOADING_KEYS:
        config.pop(key, None)
    for key in SOURCE_KEYS:
        if key in original:
            config[key] = original[key]
        elif key == "model_max_length":
            config.pop(key, None)  # the loader's unbounded value; the source set none
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
