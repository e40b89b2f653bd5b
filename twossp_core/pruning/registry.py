"""User-facing method names → option schema and implementation.

Configs are plain pydantic models (no torch) so requests can be validated anywhere; the
implementation class is imported only when a run starts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from twossp_core.errors import InvalidSpec


@dataclass(frozen=True)
class MethodEntry:
    config: str  # "module:Class" of the pydantic options model
    impl: str  # "module:Class" of the PruningMethod subclass
    summary: str


METHODS: dict[str, MethodEntry] = {
    "2ssp": MethodEntry(
        "twossp_core.pruning.twossp.config:TwoSSPConfig",
        "twossp_core.pruning.twossp.method:TwoSSP",
        "2SSP: FFN neuron pruning by activation norm, then greedy attention removal by perplexity",
    ),
    "2ssp-refit": MethodEntry(
        "twossp_core.pruning.twossp_refit.config:TwoSSPRefitConfig",
        "twossp_core.pruning.twossp_refit.method:TwoSSPRefit",
        "2SSP + refit: 2SSP, then a least-squares refit of every kept FFN's down projection (no training)",
    ),
    "shortgpt": MethodEntry(
        "twossp_core.pruning.shortgpt.config:ShortGPTConfig",
        "twossp_core.pruning.shortgpt.method:ShortGPT",
        "ShortGPT: delete the blocks with the lowest block influence (1 - cos(input, output), last token)",
    ),
    "window": MethodEntry(
        "twossp_core.pruning.window.config:WindowConfig",
        "twossp_core.pruning.window.method:SlidingWindow",
        "Sliding window: delete the run of consecutive blocks with the smallest angular distance across it",
    ),
    "blockpruner": MethodEntry(
        "twossp_core.pruning.blockpruner.config:BlockPrunerConfig",
        "twossp_core.pruning.blockpruner.method:BlockPruner",
        "BlockPruner: greedy removal of attention/FFN submodules by calibration perplexity",
    ),
    "slicegpt": MethodEntry(
        "twossp_core.pruning.slicegpt.config:SliceGPTConfig",
        "twossp_core.pruning.slicegpt.method:SliceGPT",
        "SliceGPT: PCA rotation and hidden-dimension slicing (sparsity = hidden fraction; llama only)",
    ),
    "evopress": MethodEntry(
        "twossp_core.pruning.evopress.config:EvoPressConfig",
        "twossp_core.pruning.evopress.method:EvoPress",
        "EvoPress: evolutionary search over dropped attention/FFN submodules by KL to the dense model",
    ),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def method_names() -> list[str]:
    return list(METHODS)


def method_config(name: str, options: dict[str, Any] | None = None) -> BaseModel:
    """Validate `options` against the method's schema; unknown method or option → InvalidSpec."""
    entry = METHODS.get(name)
    if entry is None:
        raise InvalidSpec(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    config_cls = _load(entry.config)
    try:
        return config_cls.model_validate(options or {})
    except ValidationError as exc:
        from twossp_core.spec import format_validation_error

        raise InvalidSpec(f"options for {name}: {format_validation_error(exc)}") from None


def method_class(name: str) -> type:
    entry = METHODS.get(name)
    if entry is None:
        raise InvalidSpec(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return _load(entry.impl)
