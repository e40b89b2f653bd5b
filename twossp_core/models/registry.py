"""Which Hugging Face `model_type`s have an adapter (torch-free, so requests can be checked early)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from twossp_core.errors import UnsupportedModel

if TYPE_CHECKING:
    from torch import nn

    from twossp_core.models.base import ModelAdapter

ADAPTERS: dict[str, str] = {
    "llama": "twossp_core.models.llama:LlamaAdapter",
    "mistral": "twossp_core.models.mistral:MistralAdapter",
    "qwen2": "twossp_core.models.qwen2:Qwen2Adapter",
    "qwen3": "twossp_core.models.qwen3:Qwen3Adapter",
    "phi3": "twossp_core.models.phi3:Phi3Adapter",
    "phi": "twossp_core.models.phi:PhiAdapter",
    "gemma": "twossp_core.models.gemma:GemmaAdapter",
    "gemma2": "twossp_core.models.gemma2:Gemma2Adapter",
}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def check_supported(model_type: str | None) -> None:
    if model_type not in ADAPTERS:
        raise UnsupportedModel(
            f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
        )


def adapter_for(model: nn.Module) -> ModelAdapter:
    model_type = getattr(model.config, "model_type", None)
    check_supported(model_type)
    module, _, name = ADAPTERS[model_type].partition(":")
    return getattr(importlib.import_module(module), name)(model)
