"""A job's planned work, from its spec before anything runs (torch-free): the tokens it pushes through the model.

A service refuses a job whose plan exceeds its limits and counts the plans of a user's queued and running jobs
(service/settings.py). The plan is an upper bound where the spec leaves a figure open: an unset `seq_len` is the
default window (capped by the model's context when its config is known), and an unset `eval_windows` evaluates the
whole source, at most one token per byte of a local file (a hub dataset without a known size has no bound).
Zero-shot scoring counts, on every model evaluated, items x choices x tokens per choice of each task: the items are
the task's declared split, or its first `task_limit` items (or its own `task_limits` figure; of each MMLU subject),
and the tokens the bounds its data declares (twossp_core/plan/tasks.py TASK_SIZES). Methods' own searches (EvoPress,
BlockPruner) are bounded by their options' limits and counted as one calibration pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twossp_core.local_inputs import UnusablePath, stat_path
from twossp_core.plan.sources import DataSource
from twossp_core.plan.spec import DEFAULT_SEQ_LEN, JobSpecBase
from twossp_core.plan.tasks import TASK_SIZES

# a heal step runs the student forward and backward (about two forward passes more) and, for `kd`, the teacher
HEAL_PASSES = {"kd": 4, "lm": 3}
# bytes of the raw text of the hub evaluation splits with a known size (wikitext-2-raw-v1 test)
HUB_EVAL_BYTES = {"wikitext2": 1_296_370}


@dataclass(frozen=True)
class Cost:
    """Planned work in tokens through the model (a forward pass over one token is one)."""

    runs: int  # pruned models: one per method and sparsity (a prune: 1)
    seq_len: int  # the job's window length as planned
    calibration_tokens: int  # calibration windows x seq_len, scored once per run
    evaluations: int  # models evaluated: the dense one, each pruned one and, with a heal, each healed one
    eval_tokens: int | None  # tokens of one evaluation over every eval source; None: unbounded
    unbounded_source: str | None  # the eval source that has no bound, if any
    heal_tokens: int  # tokens trained on over every heal of the job (the control's included)
    heal_passes: int
    task_tokens: int = 0  # tokens of one model's zero-shot scoring over every task of the job (0: no tasks)

    @property
    def tokens(self) -> int | None:
        """The job's planned work; None when an evaluation has no bound."""
        if self.eval_tokens is None:
            return None
        return (self.runs * self.calibration_tokens + self.evaluations * (self.eval_tokens + self.task_tokens)
                + self.heal_tokens * self.heal_passes)

    def breakdown(self) -> str:
        evaluation = "unbounded" if self.eval_tokens is None else f"{self.evaluations * self.eval_tokens:,}"
        text = (f"calibration {self.runs} x {self.calibration_tokens:,}, evaluation {evaluation} "
                f"({self.evaluations} models)")
        if self.task_tokens:
            text += f", zero-shot {self.evaluations} x {self.task_tokens:,}"
        if self.heal_tokens:
            text += f", heal {self.heal_tokens:,} tokens x {self.heal_passes} passes"
        return f"{text}; windows of {self.seq_len} tokens"


def planned_seq_len(wanted: int | None, context: int | None) -> int:
    seq_len = wanted or DEFAULT_SEQ_LEN
    return min(seq_len, context) if context else seq_len


def source_tokens(source: DataSource, seq_len: int, eval_windows: int | None) -> int | None:
    """Tokens evaluated on one source: `eval_windows` windows, else the whole source (None: no known bound)."""
    if eval_windows is not None:
        return eval_windows * seq_len
    if source.is_hub:
        size = HUB_EVAL_BYTES.get(source.name)
        return None if size is None or source.start is not None or source.end is not None else size
    try:
        found = stat_path(source.open_path)
    except UnusablePath:
        return None
    return None if found is None else found.st_size  # a token spans at least one byte of text


def task_tokens(limits: Mapping[str, int | None]) -> int:
    """Tokens through one model to score the zero-shot tasks of `limits` on it (each task's first `limits[task]`
    items, or all: the spec's task_limit_map)."""
    return sum(TASK_SIZES[task].planned_tokens(limit) for task, limit in limits.items())


def plan_cost(spec: JobSpecBase, config: dict[str, Any] | None = None) -> Cost:
    """The planned work of `spec` (a prune or a sweep); `config` is the model's config.json when it is known."""
    context = int(config["max_position_embeddings"]) if config and config.get("max_position_embeddings") else None
    seq_len = planned_seq_len(spec.seq_len, context)
    pruning = spec.pruning()
    runs = len(pruning.methods) * len(pruning.sparsities)
    eval_tokens: int | None = 0
    unbounded = None
    for source in spec.eval_sources():
        tokens = source_tokens(source, seq_len, spec.eval_windows)
        if tokens is None:
            eval_tokens, unbounded = None, source.label
            break
        eval_tokens += tokens
    heal_tokens, passes = 0, 0
    evaluations = 1 + runs
    if spec.heal is not None and runs:
        heal_seq = planned_seq_len(spec.heal.seq_len or seq_len, context)
        heal_tokens = spec.heal.planned_steps(heal_seq, runs) * spec.heal.batch_size * heal_seq
        passes = HEAL_PASSES[spec.heal.loss]
        evaluations += runs + (1 if spec.heal.control else 0)
    return Cost(runs=runs, seq_len=seq_len, calibration_tokens=spec.calibration_windows * seq_len,
                evaluations=evaluations, eval_tokens=eval_tokens, unbounded_source=unbounded,
                heal_tokens=heal_tokens, heal_passes=passes, task_tokens=task_tokens(spec.task_limit_map()))
