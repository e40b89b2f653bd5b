"""EvoPress: the search finds a known optimum, is deterministic for a seed, never worsens its parent on the same
tokens, draws its minibatches as configured, follows the authors' defaults, removes the planned counts, KL is zero
for the dense model, reload, real model."""

from __future__ import annotations

import copy
import random

import pytest
from methods_common import assert_reloads_equal, calibration, ppl, prune, prune_stories, stories_workspace
from tiny_models import tiny_model

from twossp_core.errors import InvalidSpec
from twossp_core.models.registry import adapter_for
from twossp_core.plan.methods import method_config
from twossp_core.pruning.evopress.method import DenseReference, candidate_kl
from twossp_core.pruning.evopress.search import default_generations, evolve, mutate, plan_counts, random_genome

# calibration() windows are 32 tokens: selection on 1 then all 4 windows
SMALL = {"generations": 4, "offspring": 4, "initial_candidates": 4, "initial_tokens": 32,
         "selection_tokens": [32, 128], "selection_survivors": [2, 1]}


def test_plan_counts_closest_to_target():
    assert plan_counts(3, 10, 30, 50) == (2, 1)  # 2*10 + 30 = 50 exactly
    assert plan_counts(4, 10, 30, 60) == (3, 1)  # (0,2) and (3,1) both hit 60: more attention wins
    assert plan_counts(2, 10, 30, 200) == (2, 2)


def test_mutation_keeps_counts():
    rng = random.Random(0)
    genome = random_genome(rng, 8, (3, 2))
    for _ in range(50):
        genome = mutate(rng, genome, 8)
        assert len(genome[0]) == 3 and len(genome[1]) == 2
        assert len(set(genome[0])) == 3 and all(0 <= i < 8 for i in genome[0] + genome[1])


def test_search_finds_a_known_optimum_and_is_monotone():
    best = ((1, 4, 6), (0, 7))
    seen: list[tuple[int, ...]] = []

    def fitness(genome, windows):
        seen.append(windows)
        return len(set(genome[0]) ^ set(best[0])) + len(set(genome[1]) ^ set(best[1])) + 0.01 / len(windows)

    def run():
        return evolve(blocks=8, counts=(3, 2), fitness=fitness, generations=60, offspring=8, initial=(1, 16),
                      steps=[(1, 4), (3, 1)], available=3, seed=0)

    result = run()
    assert result.best == best and result.windows == (0, 1, 2)
    assert result.history == sorted(result.history, reverse=True)  # the last step uses every window: same tokens
    assert {len(w) for w in seen} == {1, 3} and len({w for w in seen if len(w) == 1}) == 3  # drawn at random
    assert run().history == result.history


def test_parent_survives_unless_a_child_is_as_fit_on_the_same_tokens():
    calls: list[tuple[tuple, tuple]] = []

    def fitness(genome, windows):  # depends on the minibatch: only same-token comparisons are meaningful
        calls.append((genome, windows))
        return sum(genome[0]) + 10 * windows[0]

    result = evolve(blocks=6, counts=(2, 0), fitness=fitness, generations=5, offspring=3, initial=(1, 4),
                    steps=[(1, 2), (1, 1)], available=4, seed=1)
    last = [g for g, w in calls if w == result.windows]
    assert result.best in last and result.fitness == min(fitness(g, result.windows) for g in last)


def test_default_budget_is_the_authors_recipe():
    cfg = method_config("evopress", {})
    assert (cfg.offspring, cfg.initial_candidates, cfg.initial_tokens) == (32, 64, 2048)
    assert (cfg.selection_tokens, cfg.selection_survivors) == ([2048, 32768], [2, 1])
    assert default_generations(12, (6, 4)) == int((6 * 6 + 4 * 8) / 1.5)  # single swaps / 1.5
    dense = tiny_model("llama")  # 4 blocks; 32-token windows: 2,048 tokens → 64 windows, capped at the 4 there
    out = prune("evopress", copy.deepcopy(dense), 0.375, options={"offspring": 2, "initial_candidates": 2})
    d = out.details
    assert d["generations"] == default_generations(4, (d["attention_removed"], d["mlp_removed"]))
    assert d["selection_steps"] == [{"windows": 4, "survivors": 2}, {"windows": 4, "survivors": 1}]
    assert d["initial_selection"] == {"windows": 4, "candidates": 2}


def test_kl_is_zero_without_removal_and_positive_with():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    ref = DenseReference(adapter, calibration(2, 24))
    assert candidate_kl(adapter, ref, ((), ()), [0, 1]) == pytest.approx(0.0, abs=1e-6)
    assert candidate_kl(adapter, ref, ((1,), ()), [0, 1]) > 1e-4


def test_prune_is_deterministic_and_removes_planned_counts(tmp_path):
    dense = tiny_model("llama")
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    out_a = prune("evopress", a, 0.375, options={**SMALL, "seed": 3})
    out_b = prune("evopress", b, 0.375, options={**SMALL, "seed": 3})
    assert (out_a.removed_attention, out_a.removed_mlp) == (out_b.removed_attention, out_b.removed_mlp)
    d = out_a.details
    whole = len(out_a.removed_blocks)
    assert len(out_a.removed_attention) + whole == d["attention_removed"]
    assert len(out_a.removed_mlp) + whole == d["mlp_removed"]
    removed = adapter_for(dense).blocks_params() - adapter_for(a).blocks_params()
    assert removed == d["removed_params"]
    assert d["kl_history"] == sorted(d["kl_history"], reverse=True)
    assert_reloads_equal(a, tmp_path, remote_code=bool(out_a.removed_attention or out_a.removed_mlp))


def test_options_are_validated():
    with pytest.raises(InvalidSpec):
        method_config("evopress", {"selection_tokens": [2, 1], "selection_survivors": [2, 1]})
    with pytest.raises(InvalidSpec):
        method_config("evopress", {"selection_survivors": [4, 2, 2]})
    with pytest.raises(InvalidSpec):
        method_config("evopress", {"population": 3})


@pytest.mark.slow
def test_stories260k_evopress_beats_random_choices(stories_model, stories_text):
    ws = stories_workspace(str(stories_model), str(stories_text))
    options = {"generations": 8, "offspring": 8, "initial_candidates": 8}
    report = prune_stories(ws, "evopress", 0.375, options)
    details = report["method_details"]
    dense, pruned = ppl(report)
    assert dense < pruned < 1e4
    # the chosen candidate is at least as close to the dense model as random candidates with the same counts
    adapter = adapter_for(ws.model)
    ref = DenseReference(adapter, ws.calibration)
    rng = random.Random(1)
    counts = (details["attention_removed"], details["mlp_removed"])
    windows = details["kl_windows"]
    randoms = [candidate_kl(adapter, ref, random_genome(rng, 5, counts), windows) for _ in range(4)]
    whole = report["removed_blocks"]
    genome = (tuple(sorted(report["removed_attention"] + whole)), tuple(sorted(report["removed_mlp"] + whole)))
    chosen = candidate_kl(adapter, ref, genome, windows)
    assert chosen == pytest.approx(details["kl_divergence"], rel=1e-6)
    assert chosen <= min(randoms) + 1e-9
