"""User-facing method names → everything the plans need to know about a method before it runs.

Each entry names its option schema, its memory declaration and its implementation, the stages it reports (with
their share of the run, for progress), an optional preflight check and the export formats its output supports.
What an entry names here is torch-free, so requests can be validated and planned anywhere; the implementation
class is loaded by twossp_core/pruning/registry.py only when a run starts. Adding a method is one entry here (and
its package).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from twossp_core.plan.declarations import MethodMemory, Stage
from twossp_core.plan.schema import entry_of, load_object, validate_options


@dataclass(frozen=True)
class MethodEntry:
    config: str  # "module:Class" of the pydantic options model
    # "module:function"(config, calibration_windows) -> MethodMemory: what it holds while it runs (torch-free)
    memory: str
    impl: str  # "module:Class" of the PruningMethod subclass
    summary: str
    # the stage names the method reports through progress, in order, with their weights (the pipeline's
    # evaluate_dense stage weighs 15; a method weighs about 50 in all); a stage entered twice is listed twice
    stages: tuple[Stage, ...]
    # "module:function"(counts: BlockCounts, sparsity, config) raising InfeasibleTarget when the target cannot
    # be met on a model of that shape, and returning the FFN width the pruned blocks keep when the method decides
    # it (None otherwise); torch-free, run before a job is queued
    preflight: str | None = None
    # execution modes beside in-memory (twossp_core.plan.memory): "block-by-block" when every weight edit goes through
    # runtime.offload.editing_block (or needs no weights); "multi-device" when its computation follows each block's
    # device (forward passes, recorded block inputs, module removal, FFN slicing in place)
    modes: tuple[str, ...] = ("block-by-block", "multi-device")
    # an example of its options, shown on the submit form and in the OpenAPI document (a test submits each one)
    example: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, MethodEntry] = {
    "2ssp": MethodEntry(
        "twossp_core.pruning.twossp.config:TwoSSPConfig",
        "twossp_core.pruning.twossp.config:memory_needs",
        "twossp_core.pruning.twossp.method:TwoSSP",
        "2SSP: FFN neuron pruning by activation norm, then greedy attention removal by perplexity",
        stages=(Stage("stage1", 25), Stage("stage2", 25)),
        preflight="twossp_core.pruning.twossp.balance:check_feasible",
        example={"round_to": 16, "stage2_windows": 4},
    ),
    "2ssp-refit": MethodEntry(
        "twossp_core.pruning.twossp_refit.config:TwoSSPRefitConfig",
        "twossp_core.pruning.twossp_refit.config:memory_needs",
        "twossp_core.pruning.twossp_refit.method:TwoSSPRefit",
        "2SSP + refit: 2SSP, then a least-squares refit of every kept FFN's down projection (no training)",
        # by default stage 2 decides on the sliced model (stage2_on_refit=false), then one refit pass; with
        # stage2_on_refit=true a refit pass precedes stage 2 as well (reported as a second "refit" stage)
        stages=(Stage("stage1", 25), Stage("stage2", 15), Stage("refit", 10)),
        preflight="twossp_core.pruning.twossp.balance:check_feasible",
        modes=("block-by-block",),  # its pass computes every block on the windows' device
        example={"ridge": 0.01, "stage2_windows": 4},
    ),
    "shortgpt": MethodEntry(
        "twossp_core.pruning.shortgpt.config:ShortGPTConfig",
        "twossp_core.plan.declarations:holds_nothing",
        "twossp_core.pruning.shortgpt.method:ShortGPT",
        "ShortGPT: delete the blocks with the lowest block influence (1 - cos(input, output), last token)",
        stages=(Stage("influence", 50),),
        example={"rounding": "floor"},
    ),
    "window": MethodEntry(
        "twossp_core.pruning.window.config:WindowConfig",
        "twossp_core.plan.declarations:holds_nothing",
        "twossp_core.pruning.window.method:SlidingWindow",
        "Sliding window: delete the run of consecutive blocks with the smallest angular distance across it",
        stages=(Stage("distances", 50),),
        example={"rounding": "floor"},
    ),
    "blockpruner": MethodEntry(
        "twossp_core.pruning.blockpruner.config:BlockPrunerConfig",
        "twossp_core.pruning.blockpruner.config:memory_needs",
        "twossp_core.pruning.blockpruner.method:BlockPruner",
        "BlockPruner: greedy removal of attention/FFN submodules by calibration perplexity",
        stages=(Stage("greedy_removal", 50),),
        example={"windows": 4},
    ),
    "slicegpt": MethodEntry(
        "twossp_core.pruning.slicegpt.config:SliceGPTConfig",
        "twossp_core.pruning.slicegpt.config:memory_needs",
        "twossp_core.pruning.slicegpt.method:SliceGPT",
        "SliceGPT: PCA rotation and hidden-dimension slicing (sparsity = hidden fraction; llama only)",
        stages=(Stage("pca", 40), Stage("rotate", 10)),
        modes=(),  # it rotates weights across all blocks at once
        example={"round_to": 8},
    ),
    "evopress": MethodEntry(
        "twossp_core.pruning.evopress.config:EvoPressConfig",
        "twossp_core.pruning.evopress.config:memory_needs",
        "twossp_core.pruning.evopress.method:EvoPress",
        "EvoPress: evolutionary search over dropped attention/FFN submodules by KL to the dense model",
        stages=(Stage("evolution", 50),),
        example={"generations": 20, "offspring": 16, "seed": 1},
    ),
}


def method_names() -> list[str]:
    return list(METHODS)


def method_entry(name: str, *, field: str | None = None) -> MethodEntry:
    return entry_of(METHODS, name, "method", field=field)


def methods_running(mode: str) -> list[str]:
    """The methods that can run in an execution mode other than in-memory (MethodEntry.modes)."""
    return [name for name, entry in METHODS.items() if mode in entry.modes]


def method_example(name: str) -> dict[str, Any]:
    """The example of the method's options (MethodEntry.example): a copy, so the caller may change it."""
    return dict(method_entry(name).example)


def method_preflight(name: str) -> Callable[..., int | None] | None:
    """The method's feasibility check (see MethodEntry.preflight), if it has one."""
    entry = method_entry(name)
    return None if entry.preflight is None else load_object(entry.preflight)


def method_config(
    name: str, options: BaseModel | Mapping[str, Any] | None = None, strict: bool = False, *,
    field: str = "options", method_field: str = "method",
) -> BaseModel:
    """Validate `options` against the method's schema; unknown method or option → InvalidSpec. strict: every value
    of its exact type (a number must be a number, not "1.5"; the service's requests). Options already validated
    (the method's config model, as a parsed spec holds them) are returned as they are. `field` / `method_field`:
    the request's fields the options and the method's name come from (a sweep's: `options.<method>`, `methods`)."""
    entry = method_entry(name, field=method_field)
    return validate_options(entry.config, options, strict=strict, label=f"options for {name}", field=field)


def method_memory(name: str, options: BaseModel | Mapping[str, Any] | None, calibration_windows: int) -> MethodMemory:
    """What the method holds while it runs with `options` (its declaration, MethodEntry.memory)."""
    declared: MethodMemory = load_object(method_entry(name).memory)(method_config(name, options), calibration_windows)
    return declared
