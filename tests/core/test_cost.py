"""A job's planned work (twossp_core/plan/cost.py): what a service limits before queueing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import require_data

from twossp_core.plan.cost import HUB_EVAL_BYTES, plan_cost
from twossp_core.plan.spec import parse_spec, parse_sweep_spec
from twossp_core.plan.tasks import TASK_NAMES, TASK_SIZES


def test_a_prune_plans_calibration_and_two_evaluations(tmp_path: Path) -> None:
    text = tmp_path / "eval.txt"
    text.write_text("x" * 10_000)
    spec = parse_spec({"model": "org/m", "sparsity": 0.5, "calibration_windows": 4, "seq_len": 256,
                       "eval": [f"{text}:0:3", "wikitext2"]})
    cost = plan_cost(spec)
    assert (cost.runs, cost.calibration_tokens, cost.evaluations) == (1, 4 * 256, 2)
    assert cost.eval_tokens == 10_000 + HUB_EVAL_BYTES["wikitext2"]  # at most a token per byte of the source
    assert cost.tokens == 4 * 256 + 2 * (10_000 + HUB_EVAL_BYTES["wikitext2"])
    windows = plan_cost(spec.model_copy(update={"eval_windows": 3}))
    assert windows.eval_tokens == 2 * 3 * 256


def test_the_model_context_caps_an_unset_window_length() -> None:
    spec = parse_spec({"model": "org/m", "sparsity": 0.5, "eval_windows": 1})
    assert plan_cost(spec).seq_len == 2048
    assert plan_cost(spec, {"max_position_embeddings": 512}).seq_len == 512
    assert plan_cost(spec.model_copy(update={"seq_len": 128}), {"max_position_embeddings": 512}).seq_len == 128


def test_a_sweep_heals_every_run_and_the_control() -> None:
    spec = parse_sweep_spec({"model": "org/m", "methods": ["2ssp", "shortgpt"], "sparsities": [0.25, 0.5, 0.75],
                             "seq_len": 64, "eval_windows": 2, "heal": {"steps": 10, "batch_size": 4}})
    cost = plan_cost(spec)
    assert cost.runs == 6 and spec.heal is not None and spec.heal.control  # a sweep heals a control by default
    assert cost.heal_tokens == (6 + 1) * 10 * 4 * 64 and cost.heal_passes == 4
    assert cost.evaluations == 1 + 6 + 6 + 1  # dense, pruned, healed, the control
    assert cost.tokens == 6 * 32 * 64 + 14 * 2 * 64 + cost.heal_tokens * 4


def test_a_hub_dataset_of_unknown_size_evaluated_in_full_has_no_bound() -> None:
    spec = parse_spec({"model": "org/m", "sparsity": 0.5, "eval": ["wikitext2", "c4:0:100"]})
    cost = plan_cost(spec)
    assert cost.tokens is None and cost.unbounded_source == "c4:0:100"
    assert plan_cost(spec.model_copy(update={"eval_windows": 5})).tokens is not None


def test_zero_shot_scoring_counts_on_every_model_evaluated() -> None:
    spec = parse_spec({"model": "org/m", "sparsity": 0.5, "seq_len": 64, "eval_windows": 2, "tasks": ["paper"]})
    cost = plan_cost(spec)
    whole = sum(size.items * size.choices * size.tokens for size in TASK_SIZES.values())
    assert cost.task_tokens == whole and cost.evaluations == 2
    assert cost.tokens == 32 * 64 + 2 * (2 * 64 + whole)
    assert "zero-shot 2 x" in cost.breakdown()
    # an unbounded paper run is over the default cap of a job (TWOSSP_MAX_JOB_TOKENS, 40 M tokens) on its own
    assert cost.tokens > 40_000_000
    limited = plan_cost(spec.model_copy(update={"task_limit": 100}))
    mmlu = TASK_SIZES["mmlu"]
    assert mmlu.planned_tokens(100) == 57 * 100 * 4 * mmlu.first_tokens  # the first 100 of each subject
    assert TASK_SIZES["winogrande"].planned_tokens(100) == 100 * 2 * TASK_SIZES["winogrande"].first_tokens
    assert TASK_SIZES["winogrande"].planned_tokens(10**6) == TASK_SIZES["winogrande"].planned_tokens(None)
    assert limited.task_tokens == sum(size.planned_tokens(100) for size in TASK_SIZES.values()) < whole
    assert limited.tokens is not None and limited.tokens < 40_000_000
    assert plan_cost(spec.model_copy(update={"tasks": []})).task_tokens == 0
    # MMLU's own limit (per subject) in place of the one for every task
    mmlu_five = plan_cost(spec.model_copy(update={"task_limit": 100, "task_limits": {"mmlu": 5}}))
    assert mmlu_five.task_tokens == limited.task_tokens - mmlu.planned_tokens(100) + 57 * 5 * 4 * mmlu.first_tokens


@pytest.mark.parametrize("task", TASK_NAMES)
def test_each_task_declares_a_bound_its_data_holds(task: str) -> None:
    """The declared sizes (plan/tasks.py) against the task data: the item count, the choices per item, and the tokens
    (a token spans at least a byte, plus 2 per request) of the whole split and of every first N items (of every
    MMLU subject)."""
    from collections import defaultdict

    from twossp_core.evaluation.zeroshot.sources import TaskData, load_task

    items = load_task(task, None, TaskData(root=require_data("tasks"))).items
    size = TASK_SIZES[task]
    assert len(items) == size.items and max(len(item.requests) for item in items) == size.choices

    def tokens(item: Any) -> int:
        return sum(len((context + continuation).encode()) + 2 for context, continuation in item.requests)

    assert sum(tokens(item) for item in items) <= size.planned_tokens(None)
    groups: dict[str | None, list[Any]] = defaultdict(list)
    for item in items:
        groups[item.group].append(item)
    assert len(groups) == size.groups
    for limit in (1, 2, 5, 10, 50, 100, 500, 1000, 5000):
        used = sum(tokens(item) for group in groups.values() for item in group[:limit])
        assert used <= size.planned_tokens(limit), limit
