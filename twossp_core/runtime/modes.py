"""A job's execution mode: its memory plan, loading the model for that mode, and the report's `memory` entry."""

from __future__ import annotations

import logging
from typing import Any

import torch

from twossp_core.plan.memory import MemoryPlan, spec_plan
from twossp_core.plan.sources import ModelInput
from twossp_core.runtime.peaks import PeakMeter, current_rss

logger = logging.getLogger("twossp")
# RSS the process still gains after the plan is made: the model family's code, the tokenizer, the data code
RUNTIME_ALLOWANCE = 64 * 2**20


def model_config_dict(model: ModelInput | str) -> dict[str, Any]:
    from twossp_core.preflight import local_config
    from twossp_core.runtime.loading import load_config

    cfg = local_config(model)
    return cfg if cfg is not None else load_config(model).to_dict()


def visible_gpus(spec: Any) -> list[tuple[str, int]] | None:
    """The GPUs a job may spread over, the current device first, with their free memory now; None for a job that
    cannot spread (a CPU job, an execution other than auto and multi-device, one GPU with auto). Only then is
    every visible GPU queried (which starts a CUDA context on each)."""
    from twossp_core.runtime.devices import resolve_device

    if resolve_device(spec.device).type != "cuda" or spec.execution not in ("auto", "multi-device"):
        return None
    count = torch.cuda.device_count()
    if count < 2 and spec.execution == "auto":
        return None
    current = torch.cuda.current_device()
    order = [current, *(i for i in range(count) if i != current)]
    return [(f"cuda:{i}", int(torch.cuda.mem_get_info(i)[0])) for i in order]


def job_plan(spec: Any) -> MemoryPlan:
    """The plan of `spec` on this machine (baseline: this process's RSS now); InvalidSpec when it cannot fit."""
    from twossp_core.runtime.devices import resolve_device

    device = resolve_device(spec.device).type
    plan = spec_plan(spec, model_config_dict(spec.model_input()), device=device,
                     baseline=(current_rss() or 0) + RUNTIME_ALLOWANCE, devices=visible_gpus(spec))
    logger.info(plan.describe())
    return plan


def load_for_plan(spec: Any, plan: MemoryPlan) -> tuple[Any, Any]:
    if plan.mode == "multi-device":
        from twossp_core.runtime.dispatch import load_multi_device

        assert plan.placement is not None
        return load_multi_device(spec.model_input(), dtype=spec.dtype, placement=plan.placement)
    if plan.mode == "block-by-block":
        from twossp_core.runtime.offload import load_block_by_block, offloader_of

        model, tokenizer = load_block_by_block(spec.model_input(), dtype=spec.dtype, device=spec.device)
        offloader_of(model).window_budget = plan.activation_windows  # type: ignore[union-attr]
        return model, tokenizer
    from twossp_core.runtime.loading import load_model

    return load_model(spec.model_input(), dtype=spec.dtype, device=spec.device)


def memory_report(spec: Any, plan: MemoryPlan, meter: PeakMeter, model: Any) -> dict[str, Any]:
    from twossp_core.runtime.offload import offloader_of

    offloader = offloader_of(model)
    return {
        "mode": plan.mode,
        "budgets": {"max_host_memory": spec.max_host_memory, "max_device_memory": spec.max_device_memory},
        "plan": plan.as_dict(),
        "measured": meter.measured(),
        "block_reads": offloader.block_reads if offloader is not None else None,
    }
