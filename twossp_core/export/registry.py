"""Saving a model in a format of the export registry (twossp_core/plan/exports.py): the exporter, one module per
format under `twossp_core.export`, is loaded here when a model is saved.

An exporter is a function `export(model, tokenizer, out_dir, metadata, options, source) -> dict` that writes the
directory (model files and README.md, the model card) and returns what the report keeps under `export`; `source`
is the model pruned (`ModelInput`: the metadata's `model` and where it is opened; None: at that name), whose files
the export carries settings over from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from twossp_core.plan.exports import check_family, export_format, export_options
from twossp_core.plan.schema import load_object
from twossp_core.plan.sources import ModelInput


def run_export(
    name: str, model: Any, tokenizer: Any, out_dir: Path, metadata: dict[str, Any],
    options: BaseModel | Mapping[str, Any] | None, source: ModelInput | None = None,
) -> dict[str, Any]:
    """Write `model` in format `name` into `out_dir`; returns the report's `export` entry. `options`: the format's
    options model as a parsed spec holds it (used as it is), or plain options (a library caller's), checked here.
    `source`: the model pruned with where it is opened (None: at the metadata's `model`)."""
    entry = export_format(name)
    validated = export_options(name, options)
    check_family(name, getattr(model.config, "model_type", None))
    exporter = load_object(entry.impl)
    result: dict[str, Any] = exporter(model, tokenizer, Path(out_dir), metadata, validated, source)
    return {"format": name, "options": validated.model_dump(), **result}
