"""Load a directory written by `save_pruned` (no remote code needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twossp_core.errors import ModelNotFound
from twossp_core.runtime.loading import load_model


def load_pruned(path: str | Path, *, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"{path}: not a model directory (no config.json)")
    return load_model(str(path), dtype=dtype, device=device)
