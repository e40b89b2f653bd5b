"""User-facing export format names → exporter, option schema, capabilities and memory (torch-free).

Requests (CLI, job JSON, sweeps) name a format; this registry validates the name and its options and tells
early what a format can hold, so a job that cannot be exported is refused before anything runs. The
exporter itself (one module per format under `twossp_core.export`) is loaded by twossp_core/export/registry.py
only when a model is saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from twossp_core.errors import InvalidSpec
from twossp_core.plan.methods import method_config
from twossp_core.plan.schema import entry_of, validate_options


class NoOptions(BaseModel):
    """A format without options."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ExportFormat:
    impl: str  # "module:function" of the exporter
    options: str  # "module:Class" of the pydantic options model (torch-free)
    summary: str
    # decoder blocks' worth of tensors it holds while it writes one, besides the model's own (its converted copy);
    # the export command's plan counts them (twossp_core/plan/export_memory.py)
    held_blocks: int
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
        "twossp_core.plan.exports:NoOptions",
        "only what remains, rebuilt by modeling_twossp.py (twossp, or transformers with trust_remote_code)",
        held_blocks=1,
        holds_rotation=True,
        needs_remote_code=True,
    ),
    "portable": ExportFormat(
        "twossp_core.export.portable:export_portable",
        "twossp_core.plan.exports:NoOptions",
        "the plain base architecture, removed submodules stored as zeros (loads anywhere, runs at dense speed)",
        held_blocks=1,
    ),
    "gguf": ExportFormat(
        "twossp_core.export.gguf:export_gguf",
        "twossp_core.export.gguf_options:GGUFOptions",
        "one model.gguf for llama.cpp (tokenizer inside): plain llama, or deci for per-layer structures",
        held_blocks=1,
        families=("llama", "mistral"),
        example={"type": "q8_0"},
    ),
    "decilm": ExportFormat(
        "twossp_core.export.decilm:export_decilm",
        "twossp_core.plan.exports:NoOptions",
        "DeciLMForCausalLM with block_configs (vLLM nemotron_nas; transformers with trust_remote_code)",
        held_blocks=1,
        families=("llama", "mistral"),
        needs_remote_code=True,
        ffn_multiple=256,
    ),
}


def format_names() -> list[str]:
    return list(FORMATS)


def export_format(name: str) -> ExportFormat:
    return entry_of(FORMATS, name, "export format", field="export")


def export_example(name: str) -> dict[str, Any]:
    """The example of the format's options (ExportFormat.example; {} for a format without options): a copy."""
    return dict(export_format(name).example)


def export_options(name: str, options: BaseModel | Mapping[str, Any] | None = None, strict: bool = False) -> BaseModel:
    """Validate `options` against the format's schema; unknown format or option → InvalidSpec. strict: every value
    of its exact type (the service's requests). Options already validated (the format's options model, as a parsed
    spec holds them) are returned as they are."""
    return validate_options(export_format(name).options, options, strict=strict, label=f"export options for {name}",
                            field="export_options")


def check_methods(name: str, methods: list[str]) -> None:
    """Refuse methods whose pruned models the format cannot hold (a rotated residual stream, say)."""
    entry = export_format(name)
    if entry.holds_rotation:
        return
    refused = [m for m in methods if getattr(method_config(m, None), "rotated_residual", False)]
    if refused:
        raise InvalidSpec(
            f"export {name!r} cannot hold a model pruned by {', '.join(refused)} (a rotated residual stream "
            "has no equivalent there); use 'compact'", field="export",
        )


def check_family(name: str, model_type: str | None) -> None:
    """Refuse a model family the format cannot write, naming the ones it can."""
    families = export_format(name).families
    if families is not None and model_type not in families:
        raise InvalidSpec(
            f"export {name!r} supports the model types {', '.join(families)}; this model is {model_type!r} "
            "(use 'compact' or 'portable')", field="export",
        )


def check_ffn_width(name: str, width: int, *, hint: str = "") -> None:
    """Refuse an FFN width the format cannot represent (DeciLM: multiples of 256)."""
    multiple = export_format(name).ffn_multiple
    if multiple and width % multiple:
        raise InvalidSpec(
            f"export {name!r} can only hold FFN widths that are multiples of {multiple}; this model keeps {width} "
            f"neurons per block{hint}", field="export",
        )

