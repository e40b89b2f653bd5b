"""BlockPruner: greedy choice equals a full-model brute force, parameter target, reload, real model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from methods_common import assert_reloads_equal, calibration, ppl, prune, prune_stories, stories_workspace
from tiny_models import tiny_model

from twossp_core.models.registry import adapter_for
from twossp_core.pruning.blockpruner.budget import keep_removing, target_params
from twossp_core.pruning.submodules import remaining, removal_cost
from twossp_core.runtime.forward import window_nll


def test_budget_stops_nearest_to_target():
    assert keep_removing(0, 100, 30)
    assert keep_removing(80, 100, 30)  # 20 left > 15
    assert not keep_removing(90, 100, 30)  # 10 left <= 15
    assert not keep_removing(0, 100, None)
    assert target_params(0.25, 1000) == 250


def brute_force_first(model, windows):
    """The submodule whose removal gives the lowest calibration NLL, by whole-model passes."""
    adapter = adapter_for(model)
    best = None
    for kind, idx in remaining(adapter):
        with adapter.bypassed(kind, idx):
            s, n = window_nll(adapter, windows)
        if best is None or s / n < best[0]:
            best = (s / n, kind, idx)
    return best


def test_first_choice_equals_brute_force_and_target_is_met(tmp_path):
    model = tiny_model("llama")
    windows = calibration(1, 32)
    expected = brute_force_first(copy.deepcopy(model), windows)
    blocks_before = adapter_for(model).blocks_params()
    outcome = prune("blockpruner", model, 0.3, windows=windows)
    first = outcome.details["removal_order"][0]
    assert (first["kind"], first["block"]) == expected[1:]
    assert first["perplexity"] == pytest.approx(math.exp(expected[0]), rel=1e-5)
    adapter = adapter_for(model)
    removed = blocks_before - adapter.blocks_params()
    assert removed == outcome.details["removed_params"]
    target = target_params(0.3, blocks_before)
    smallest = min((removal_cost(adapter, k, i) for k, i in remaining(adapter)), default=None)
    assert not keep_removing(removed, target, smallest)  # stopped because the target was reached
    last = outcome.details["removal_order"][-1]
    fresh = adapter_for(tiny_model("llama"))
    last_cost = removal_cost(fresh, last["kind"], last["block"])
    step = min(removal_cost(fresh, "attention", 0), removal_cost(fresh, "mlp", 0))
    assert keep_removing(removed - last_cost, target, step)  # ...and not one step earlier
    survivors = [i for i in range(fresh.num_blocks) if i not in outcome.removed_blocks]
    assert [survivors[i] for i in adapter.removed_attention] == outcome.removed_attention
    assert [survivors[i] for i in adapter.removed_mlp] == outcome.removed_mlp
    assert_reloads_equal(model, tmp_path, remote_code=bool(outcome.removed_attention or outcome.removed_mlp))


@pytest.mark.slow
def test_stories260k_blockpruner(stories_model, stories_text):
    ws = stories_workspace(str(stories_model), str(stories_text))
    report = prune_stories(ws, "blockpruner", 0.375)
    assert abs(report["sparsity_achieved"] - 0.375) < 0.15
    assert report["removed_attention"] or report["removed_mlp"] or report["removed_blocks"]
    order = report["method_details"]["removal_order"]
    assert [o["perplexity"] for o in order] == sorted(o["perplexity"] for o in order)
    dense, pruned = ppl(report)
    assert dense < pruned < 1e4


@pytest.mark.parametrize("sparsities", [(0.2, 0.45), (0.45, 0.2)])
def test_shared_order_gives_the_search_from_scratch(sparsities):
    """A sweep's sparsities share one greedy order: each replays what is known and searches beyond it; every
    result equals a search from scratch (same removals, same weights), whichever sparsity runs first."""
    dense = tiny_model("llama")
    windows = calibration(1, 32)
    cache: dict = {}
    for sparsity in sparsities:
        shared_model, fresh_model = copy.deepcopy(dense), copy.deepcopy(dense)
        shared = prune("blockpruner", shared_model, sparsity, windows=windows, cache=cache)
        fresh = prune("blockpruner", fresh_model, sparsity, windows=windows)
        assert shared.details["removal_order"] == fresh.details["removal_order"]
        assert (shared.removed_attention, shared.removed_mlp, shared.removed_blocks) == (
            fresh.removed_attention, fresh.removed_mlp, fresh.removed_blocks)
        shared_state, fresh_state = shared_model.state_dict(), fresh_model.state_dict()
        assert shared_state.keys() == fresh_state.keys()
        assert all(torch.equal(shared_state[k], fresh_state[k]) for k in shared_state)
    low, high = sorted(sparsities)
    assert cache  # the order was kept...
    replayed = [prune("blockpruner", copy.deepcopy(dense), s, windows=windows, cache=cache)
                .details["replayed_removals"] for s in (low, high)]
    assert replayed[0] > 0 and replayed[1] > replayed[0]  # ...and both sparsities now only replay it
