"""BlockPruner and EvoPress delete the blocks they empty: a shallower model that loads as its plain architecture."""

from __future__ import annotations

import copy

import pytest
from methods_common import assert_reloads_equal, logits, make_identity, prune, stories_workspace

from twossp_core.models.registry import adapter_for

pytestmark = pytest.mark.slow

OPTIONS = {"blockpruner": {}, "evopress": {"generations": 4, "offspring": 8, "initial_candidates": 8}}


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_a_pass_through_block_is_emptied_then_deleted(method, stories_model, stories_text, tmp_path):
    ws = stories_workspace(str(stories_model), str(stories_text))
    model = copy.deepcopy(ws.model)
    make_identity(model, 2)  # removing its attention or FFN changes nothing, any other removal hurts
    dense = copy.deepcopy(model)
    blocks = adapter_for(model).num_blocks
    # one block's worth of parameters: the attention and the FFN of block 2 are the cheapest choice
    outcome = prune(method, model, 1 / blocks, windows=ws.calibration[:4], options=OPTIONS[method])
    assert (outcome.removed_attention, outcome.removed_mlp, outcome.removed_blocks) == ([], [], [2])
    assert model.config.num_hidden_layers == len(model.model.layers) == blocks - 1
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(blocks - 1))
    assert adapter_for(model).removed_attention == adapter_for(model).removed_mlp == []
    ids = ws.calibration[4:6]
    assert logits(model, ids).equal(logits(dense, ids))
    assert_reloads_equal(model, tmp_path, remote_code=False)
