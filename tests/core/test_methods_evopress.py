"""EvoPress: the search finds a known optimum, is deterministic for a seed, never worsens its parent,
removes the planned counts, KL is zero for the dense model, reload, real model."""

from __future__ import annotations

import copy
import random

import pytest
from methods_common import assert_reloads_equal, calibration, ppl, prune, prune_stories, stories_workspace
from tiny_models import tiny_model

from twossp_core.errors import InvalidSpec
from twossp_core.models.registry import adapter_for
from twossp_core.pruning.evopress.method import DenseReference, candidate_kl
from twossp_core.pruning.evopress.search import evolve, mutate, plan_counts, random_genome
from twossp_core.pruning.registry import method_config

SMALL = {"generations": 4, "offspring": 4, "selection_windows": [1, 2], "selection_survivors": [2, 1]}


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

    def fitness(genome, windows):
        return len(set(genome[0]) ^ set(best[0])) + len(set(genome[1]) ^ set(best[1])) + 0.01 / windows

    result = evolve(blocks=8, counts=(3, 2), fitness=fitness, generations=60, offspring=8,
                    steps=[(1, 4), (2, 1)], seed=0)
    assert result.best == best
    assert result.history == sorted(result.history, reverse=True)
    again = evolve(blocks=8, counts=(3, 2), fitness=fitness, generations=60, offspring=8,
                   steps=[(1, 4), (2, 1)], seed=0)
    assert again.history == result.history


def test_kl_is_zero_without_removal_and_positive_with():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    ref = DenseReference(adapter, calibration(2, 24))
    assert candidate_kl(adapter, ref, ((), ()), 2) == pytest.approx(0.0, abs=1e-6)
    assert candidate_kl(adapter, ref, ((1,), ()), 2) > 1e-4


def test_prune_is_deterministic_and_removes_planned_counts(tmp_path):
    dense = tiny_model("llama")
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    out_a = prune("evopress", a, 0.375, options={**SMALL, "seed": 3})
    out_b = prune("evopress", b, 0.375, options={**SMALL, "seed": 3})
    assert (out_a.removed_attention, out_a.removed_mlp) == (out_b.removed_attention, out_b.removed_mlp)
    d = out_a.details
    assert len(out_a.removed_attention) == d["attention_removed"] and len(out_a.removed_mlp) == d["mlp_removed"]
    removed = adapter_for(dense).blocks_params() - adapter_for(a).blocks_params()
    assert removed == d["removed_params"]
    assert d["kl_history"] == sorted(d["kl_history"], reverse=True)
    assert_reloads_equal(a, tmp_path, remote_code=True)


def test_options_are_validated():
    with pytest.raises(InvalidSpec):
        method_config("evopress", {"selection_windows": [2, 1], "selection_survivors": [2, 1]})
    with pytest.raises(InvalidSpec):
        method_config("evopress", {"selection_survivors": [4, 2, 2]})
    with pytest.raises(InvalidSpec):
        method_config("evopress", {"population": 3})


def test_stories260k_evopress_beats_random_choices(stories_model, stories_text):
    ws = stories_workspace(str(stories_model), str(stories_text))
    options = {"generations": 8, "offspring": 8}
    report = prune_stories(ws, "evopress", 0.375, options)
    details = report["method_details"]
    dense, pruned = ppl(report)
    assert dense < pruned < 1e4
    # the chosen candidate is at least as close to the dense model as random candidates with the same counts
    adapter = adapter_for(ws.model)
    ref = DenseReference(adapter, ws.calibration[:4])
    rng = random.Random(1)
    counts = (details["attention_removed"], details["mlp_removed"])
    randoms = [candidate_kl(adapter, ref, random_genome(rng, 5, counts), 4) for _ in range(4)]
    chosen = candidate_kl(adapter, ref, (tuple(report["removed_attention"]), tuple(report["removed_mlp"])), 4)
    assert chosen == pytest.approx(details["kl_divergence"], rel=1e-6)
    assert chosen <= min(randoms) + 1e-9
