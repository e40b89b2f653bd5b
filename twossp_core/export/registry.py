"""User-facing export format names → exporter, option schema and capabilities (torch-free).

Requests (CLI, job JSON, sweeps) name a format; this registry validates the name and its options and tells
early what a format can hold, so a job that cannot be exported is refused before anything runs. The
exporter itself (one module per format under `twossp_core.export`) is imported only when a model is saved.

An exporter is a function `export(model, tokenizer, out_dir, metadata, options) -> dict` that writes the
directory (model files and README.md, the model card) and returns what the report keeps under `export`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from twossp_core.errors import InvalidSpec


class NoOptions(BaseModel):
    """A format without options."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ExportFormat:
    impl: str  # "module:function" of the exporter
    options: str  # "module:Class" of the pydantic options model (torch-free)
    summary: str
    families: tuple[str, ...] | None = None  # model_types it can write; None: every supported family
    holds_rotation: bool = False  # can hold a rotated-and-sliced residual stream (slicegpt)
    needs_remote_code: bool = False  # transformers must run code shipped in the directory
    ffn_multiple: int | None = None  # every kept FFN width must be a multiple of this
    # an example of its options, shown on the submit form and in the OpenAPI document (a test submits each one);
    # empty for a format without options
    example: dict[str, Any] = field(default_factory=dict)


FORMATS: dict[str, ExportFormat] = {
    "compact": ExportFormat(
        "twossp_core.export.save:export_compact",
        "twossp_core.export.registry:NoOptions",
        "only what remains, rebuilt by modeling_twossp.py (twossp, or transformers with trust_remote_code)",
        holds_rotation=True,
        needs_remote_code=True,
    ),
    "portable": ExportFormat(
        "twossp_core.export.portable:export_portable",
        "twossp_core.export.registry:NoOptions",
        "the plain base architecture, removed submodules stored as zeros (loads anywhere, runs at dense speed)",
    ),
    "gguf": ExportFormat(
        "twossp_core.export.gguf:export_gguf",
        "twossp_core.export.gguf_options:GGUFOptions",
        "one model.gguf for llama.cpp (tokenizer inside): plain llama, or deci for per-layer structures",
        families=("llama", "mistral"),
        example={"type": "q8_0"},
    ),
    "decilm": ExportFormat(
        "twossp_core.export.decilm:export_decilm",
        "twossp_core.export.registry:NoOptions",
        "DeciLMForCausalLM with block_configs (vLLM nemotron_nas; transformers with trust_remote_code)",
        families=("llama", "mistral"),
        needs_remote_code=True,
        ffn_multiple=256,
    ),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def format_names() -> list[str]:
    return list(FORMATS)


def export_format(name: str) -> ExportFormat:
    entry = FORMATS.get(name)
    if entry is None:
        raise InvalidSpec(f"unknown export format {name!r}; available: {', '.join(FORMATS)}")
    return entry


def export_example(name: str) -> dict[str, Any]:
    """The example of the format's options (ExportFormat.example; {} for a format without options): a copy."""
    return dict(export_format(name).example)


def export_options(name: str, options: dict[str, Any] | None = None, strict: bool = False) -> BaseModel:
    """Validate `options` against the format's schema; unknown format or option → InvalidSpec. strict: every value
    of its exact type (the service's requests)."""
    config_cls = _load(export_format(name).options)
    try:
        return config_cls.model_validate(options or {}, strict=strict)
    except ValidationError as exc:
        from twossp_core.spec import format_validation_error

        raise InvalidSpec(f"export options for {name}: {format_validation_error(exc)}") from None


def check_methods(name: str, methods: list[str]) -> None:
    """Refuse methods whose pruned models the format cannot hold (a rotated residual stream, say)."""
    from twossp_core.pruning.registry import method_config

    entry = export_format(name)
    if entry.holds_rotation:
        return
    refused = [m for m in methods if getattr(method_config(m, None), "rotated_residual", False)]
    if refused:
        raise InvalidSpec(
            f"export {name!r} cannot hold a model pruned by {', '.join(refused)} (a rotated residual stream "
            "has no equivalent there); use 'compact'"
        )


def check_family(name: str, model_type: str | None) -> None:
    """Refuse a model family the format cannot write, naming the ones it can."""
    families = export_format(name).families
    if families is not None and model_type not in families:
        raise InvalidSpec(
            f"export {name!r} supports the model types {', '.join(families)}; this model is {model_type!r} "
            "(use 'compact' or 'portable')"
        )


def check_ffn_width(name: str, width: int, *, hint: str = "") -> None:
    """Refuse an FFN width the format cannot represent (DeciLM: multiples of 256)."""
    multiple = export_format(name).ffn_multiple
    if multiple and width % multiple:
        raise InvalidSpec(
            f"export {name!r} can only hold FFN widths that are multiples of {multiple}; this model keeps {width} "
            f"neurons per block{hint}"
        )


def run_export(
    name: str, model: Any, tokenizer: Any, out_dir: Path, metadata: dict[str, Any], options: dict[str, Any] | None
) -> dict[str, Any]:
    """Write `model` in format `name` into `out_dir`; returns the report's `export` entry."""
    entry = export_format(name)
    validated = export_options(name, options)
    check_family(name, getattr(model.config, "model_type", None))
    exporter = _load(entry.impl)
    result: dict[str, Any] = exporter(model, tokenizer, Path(out_dir), metadata, validated)
    return {"format": name, "options": validated.model_dump(), **result}
