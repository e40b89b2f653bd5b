"""A job's planned work (twossp_core/plan/cost.py): what a service limits before queueing."""

from __future__ import annotations

from pathlib import Path

from twossp_core.plan.cost import HUB_EVAL_BYTES, plan_cost
from twossp_core.plan.spec import parse_spec, parse_sweep_spec


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
