"""ShortGPT and whole-block removal: influence scoring, rounding, physical deletion, plain reload, real model."""

from __future__ import annotations

import copy

import pytest
import torch
from methods_common import (
    assert_reloads_equal,
    calibration,
    logits,
    make_identity,
    ppl,
    prune,
    prune_stories,
    stories_workspace,
)
from tiny_models import tiny_model

from twossp_core.errors import InfeasibleTarget
from twossp_core.models.registry import adapter_for
from twossp_core.pruning.block_count import blocks_to_remove
from twossp_core.pruning.hidden_states import last_token_states
from twossp_core.pruning.shortgpt.influence import block_influence, least_influential


@pytest.mark.parametrize(("blocks", "s", "rounding", "n"), [
    (4, 0.25, "nearest", 1), (5, 0.375, "nearest", 2), (5, 0.5, "nearest", 2), (5, 0.5, "ceil", 3),
    (8, 0.375, "nearest", 3), (5, 0.25, "floor", 1), (5, 0.3, "ceil", 2),
])
def test_block_count_rounding(blocks, s, rounding, n):
    assert blocks_to_remove(blocks, s, rounding) == n


def test_block_count_refuses_nothing_or_everything():
    with pytest.raises(InfeasibleTarget):
        blocks_to_remove(4, 0.05)
    with pytest.raises(InfeasibleTarget):
        blocks_to_remove(4, 0.95)


def test_influence_is_one_minus_cosine():
    states = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[0.0, -1.0]]])
    torch.testing.assert_close(block_influence(states), torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    assert least_influential(torch.tensor([0.5, 0.1, 0.3, 0.1]), 2) == [1, 3]


def test_removes_the_pass_through_block_and_deletes_layers(tmp_path):
    model = tiny_model("llama")
    make_identity(model, 2)
    dense = copy.deepcopy(model)
    outcome = prune("shortgpt", model, 0.25)
    assert outcome.removed_blocks == [2]
    assert outcome.details["block_influence"][2] == pytest.approx(0.0, abs=1e-6)
    assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    assert not getattr(model.config, "twossp_structure", None)
    # the deleted block was a pass-through, so the output is unchanged
    ids = calibration(2, 16)
    torch.testing.assert_close(logits(model, ids), logits(dense, ids), rtol=1e-4, atol=1e-4)
    assert_reloads_equal(model, tmp_path, remote_code=False)


def test_layer_types_follow_deleted_blocks(tmp_path):
    model = tiny_model("gemma2")
    types = list(model.config.layer_types)
    outcome = prune("shortgpt", model, 0.5)
    kept = [i for i in range(4) if i not in outcome.removed_blocks]
    assert model.config.layer_types == [types[i] for i in kept]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert_reloads_equal(model, tmp_path, remote_code=False)


def test_cached_states_are_reused():
    cache: dict = {}
    model = tiny_model("llama")
    prune("shortgpt", copy.deepcopy(model), 0.25, cache=cache)
    (key,) = list(cache)
    states = cache[key]
    # make block 0 look like a pass-through in the cached statistics: a second run must follow the cache
    states[1] = states[0]
    outcome = prune("shortgpt", copy.deepcopy(model), 0.25, cache=cache)
    assert outcome.removed_blocks == [0]


def test_hidden_states_hook_matches_decoder():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    ids = calibration(2, 16)
    states = last_token_states(adapter, ids, stage="x")
    with torch.no_grad():
        out = model.model(input_ids=ids[:1], output_hidden_states=True)
    for i in range(adapter.num_blocks):
        torch.testing.assert_close(states[i, 0], out.hidden_states[i][0, -1])


@pytest.mark.slow
def test_stories260k_shortgpt(stories_model, stories_text):
    ws = stories_workspace(str(stories_model), str(stories_text))
    report = prune_stories(ws, "shortgpt", 0.375)
    influence = report["method_details"]["block_influence"]
    assert report["removed_blocks"] == sorted(sorted(range(5), key=lambda i: influence[i])[:2])
    assert report["sparsity_achieved"] == pytest.approx(0.4)
    assert report["_model"].config.num_hidden_layers == 3
    dense, pruned = ppl(report)
    assert dense < pruned < 1e4
