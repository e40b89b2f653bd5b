"""Reading task files (JSON lines, CSV, text) and Hub datasets into row dicts, with readable errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twossp_core.errors import DataError


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: not a JSON object")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no items")
    return rows


def hub_rows(path: str, name: str | None, split: str) -> list[dict[str, Any]]:
    """A Hub dataset's split as a list of rows (through `datasets`, which caches it)."""
    try:
        from datasets import load_dataset

        dataset = load_dataset(path, name, split=split)
    except Exception as exc:  # the datasets library raises many types for a missing or unreachable dataset
        label = f"{path}/{name}" if name else path
        raise DataError(f"hub dataset {label} ({split}) could not be loaded: {exc}") from None
    return [dict(row) for row in dataset]
