"""Which Hugging Face `model_type`s are supported, and each family's two halves (torch-free, so requests can be
checked early): its adapter, which knows the module names and imports torch, and its count formula, which
reads config.json only. Adding a family is one entry here, its adapter module and its `families/` module."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twossp_core.errors import UnsupportedModel

if TYPE_CHECKING:
    from torch import nn

    from twossp_core.models.base import ModelAdapter
    from twossp_core.models.families.layout import BlockFormula


@dataclass(frozen=True)
class Family:
    adapter: str  # "module:Class" of its ModelAdapter
    counts: str  # "module:Class" of its BlockFormula (torch-free)


FAMILIES: dict[str, Family] = {
    "llama": Family("twossp_core.models.llama:LlamaAdapter", "twossp_core.models.families.llama:LlamaCounts"),
    "mistral": Family(
        "twossp_core.models.mistral:MistralAdapter", "twossp_core.models.families.mistral:MistralCounts"
    ),
    "qwen2": Family("twossp_core.models.qwen2:Qwen2Adapter", "twossp_core.models.families.qwen2:Qwen2Counts"),
    "qwen3": Family("twossp_core.models.qwen3:Qwen3Adapter", "twossp_core.models.families.qwen3:Qwen3Counts"),
    "phi3": Family("twossp_core.models.phi3:Phi3Adapter", "twossp_core.models.families.phi3:Phi3Counts"),
    "phi": Family("twossp_core.models.phi:PhiAdapter", "twossp_core.models.families.phi:PhiCounts"),
    "gemma": Family("twossp_core.models.gemma:GemmaAdapter", "twossp_core.models.families.gemma:GemmaCounts"),
    "gemma2": Family("twossp_core.models.gemma2:Gemma2Adapter", "twossp_core.models.families.gemma2:Gemma2Counts"),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def check_supported(model_type: str | None) -> None:
    if model_type not in FAMILIES:
        raise UnsupportedModel(
            f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        )


def family_of(model_type: str | None) -> Family:
    check_supported(model_type)
    return FAMILIES[model_type]  # type: ignore[index]


def formula_for(model_type: str | None) -> BlockFormula:
    """The family's count formula (imports no torch)."""
    return _load(family_of(model_type).counts)()


def adapter_for(model: nn.Module) -> ModelAdapter:
    return _load(family_of(getattr(model.config, "model_type", None)).adapter)(model)
