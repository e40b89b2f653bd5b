"""A job's execution mode: its memory plan, loading the model for that mode, and the report's `memory` entry."""

from __future__ import annotations

import logging
from typing import Any

from twossp_core.memory import MemoryPlan, spec_plan
from twossp_core.runtime.peaks import PeakMeter, current_rss

logger = logging.getLogger("twossp")
# RSS the process still gains after the plan is made: the model family's code, the tokenizer, the data code
RUNTIME_ALLOWANCE = 64 * 2**20


def model_config_dict(model_id: str) -> dict[str, Any]:
    from twossp_core.preflight import local_config
    from twossp_core.runtime.loading import load_config

    cfg = local_config(model_id)
    return cfg if cfg is not None else load_config(model_id).to_dict()


def job_plan(spec: Any) -> MemoryPlan:
    """The plan of `spec` on this machine (baseline: this process's RSS now); InvalidSpec when it cannot fit."""
    from twossp_core.runtime.loading import resolve_device

    device = resolve_device(spec.device).type
    plan = spec_plan(spec, model_config_dict(spec.model), device=device,
                     baseline=(current_rss() or 0) + RUNTIME_ALLOWANCE)
    logger.info(plan.describe())
    return plan


def load_for_plan(spec: Any, plan: MemoryPlan) -> tuple[Any, Any]:
    if plan.mode == "block-by-block":
        from twossp_core.runtime.offload import load_block_by_block, offloader_of

        model, tokenizer = load_block_by_block(spec.model, dtype=spec.dtype, device=spec.device)
        offloader_of(model).window_budget = plan.activation_windows  # type: ignore[union-attr]
        return model, tokenizer
    from twossp_core.runtime.loading import load_model

    return load_model(spec.model, dtype=spec.dtype, device=spec.device)


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
