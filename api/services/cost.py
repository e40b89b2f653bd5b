"""A job's planned work against the deployment's limits (service/settings.py), before anything is queued: the
size of a sweep, the work of one job, and (api/services/jobs.py) the work of a user's queued and running jobs."""

from __future__ import annotations

from api.errors import InputRejected
from service.settings import Settings
from twossp_core.plan.cost import Cost, plan_cost
from twossp_core.plan.spec import JobSpecBase
from twossp_core.preflight import local_config


def check_cost(spec: JobSpecBase, settings: Settings) -> Cost:
    """The job's plan (twossp_core.plan.cost); InputRejected naming the limit and the request's figure when it is
    over."""
    cost = plan_cost(spec, local_config(spec.model, relative_paths=False))
    pruning = spec.pruning()
    if cost.runs > settings.max_sweep_runs:
        raise InputRejected(
            f"sweep: {cost.runs} runs ({len(pruning.methods)} methods x {len(pruning.sparsities)} sparsities) exceed "
            f"TWOSSP_MAX_SWEEP_RUNS={settings.max_sweep_runs}; split it into smaller sweeps"
        )
    if cost.tokens is None:
        raise InputRejected(
            f"eval_windows: unset, so eval source {cost.unbounded_source!r} is evaluated in full and the job's work "
            f"has no bound (TWOSSP_MAX_JOB_TOKENS={settings.max_job_tokens:,} tokens); set eval_windows",
            field="eval_windows",
        )
    if cost.tokens > settings.max_job_tokens:
        raise InputRejected(
            f"planned work: {cost.tokens:,} tokens through the model ({cost.breakdown()}) exceeds "
            f"TWOSSP_MAX_JOB_TOKENS={settings.max_job_tokens:,}; lower heal.steps or heal.tokens, eval_windows, "
            "calibration_windows, seq_len, task_limit or task_limits (or the tasks) or the sweep's size"
        )
    return cost
