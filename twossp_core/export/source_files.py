"""Files of the model an export was pruned from, read from its directory or the hub cache (never downloaded here):
what an export carries over from its source (its name, use_cache, its tokenizer's settings, its license).

The source is a `ModelInput` (its name, and where its directory is opened) or a plain name (opened at itself)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from twossp_core.file_digests import file_digest
from twossp_core.plan.sources import ModelInput

# directory names that say nothing about the model in them (".../SmolLM2-135M-Instruct/hf")
GENERIC_DIRS = re.compile(r"^(hf|huggingface|model|models|weights|checkpoints?|checkpoint-\d+|final|latest|main|"
                          r"snapshots|[0-9a-f]{40})$", re.IGNORECASE)
HUB_CACHE_DIR = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")


def is_local(model: ModelInput | str) -> bool:
    source = ModelInput.of(model)
    return source.open_path.exists() or source.name.startswith((".", "/", "~"))


def source_file(model: ModelInput | str, name: str) -> Path | None:
    """`name` in the source model's directory, or in the hub cache for a hub id; None when not at hand."""
    source = ModelInput.of(model)
    if not source.name:
        return None
    if is_local(source):
        path = source.open_path / name
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.name, name)
    except Exception:  # noqa: BLE001 - an invalid repo id or a broken cache: not at hand
        return None
    return Path(cached) if isinstance(cached, str) else None


def source_json(model: ModelInput | str, name: str) -> dict[str, Any]:
    """A JSON file of the source model ({} when it is not at hand or not a JSON object)."""
    path = source_file(model, name)
    if path is None:
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def hub_id_of(model: ModelInput | str) -> str | None:
    """The hub id of a source: the name itself for a hub id, or the repository of a hub-cache snapshot directory."""
    source = ModelInput.of(model)
    if not source.name:
        return None
    if not is_local(source):
        return source.name
    for part in source.named_path.parts[::-1]:
        match = HUB_CACHE_DIR.match(part)
        if match:
            return f"{match['org']}/{match['name']}"
    return None


def source_name(model: ModelInput | str) -> str:
    """What to call the source model: its hub id, else the name of its directory, going up past names such as
    "hf" or "checkpoint-500" that do not name a model."""
    source = ModelInput.of(model)
    hub_id = hub_id_of(source)
    if hub_id:
        return hub_id
    path = source.named_path
    for part in (path, *path.parents):
        if part.name and not GENERIC_DIRS.match(part.name):
            return part.name
    return path.name or str(source.name)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_DIGESTS: dict[tuple[str, tuple[tuple[str, int, int], ...]], tuple[str, str]] = {}


def source_sha256(model: ModelInput | str) -> tuple[str, str] | None:
    """(sha256, what it is of) for a local source: its one weights file's sha256, or for several the sha256 of
    their `sha256sum` lines (`sha256sum model-*.safetensors | sha256sum`); None when the source is not local or
    holds no weights. Computed once per process for unchanged files."""
    source = ModelInput.of(model)
    if not source.name or not is_local(source):
        return None
    path = source.open_path
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    else:
        files = []
    if not files:
        return None
    key = (str(path.resolve()), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _DIGESTS:
        if len(files) == 1:
            _DIGESTS[key] = (file_digest(files[0]), files[0].name)
        else:
            lines = "".join(f"{file_digest(p)}  {p.name}\n" for p in files)
            _DIGESTS[key] = (hashlib.sha256(lines.encode()).hexdigest(), f"sha256sum of {len(files)} weight files")
    return _DIGESTS[key]
