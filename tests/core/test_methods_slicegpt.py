"""SliceGPT: rotation is exact before slicing, sliced shapes and counts, reload both ways, restrictions, PCA
beats a random basis and the sequential bases beat one-shot dense bases on the real model."""

from __future__ import annotations

import copy

import pytest
import torch
from methods_common import assert_reloads_equal, calibration, logits, ppl, prune, prune_stories, stories_workspace
from tiny_models import tiny_model

from twossp_core.errors import UnsupportedModel
from twossp_core.evaluation.perplexity import perplexity
from twossp_core.export.portable import NotPortable, make_portable
from twossp_core.models.registry import adapter_for
from twossp_core.pruning.slicegpt.pca import principal_basis, sliced_size
from twossp_core.pruning.slicegpt.rotate import rotate_and_slice
from twossp_core.pruning.slicegpt.sequential import sequential_bases


def test_principal_basis_orders_by_variance():
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.1, 5.0, 1.0])
    q = principal_basis(x.T.double() @ x.double())
    torch.testing.assert_close(q.T @ q, torch.eye(3, dtype=torch.float64), atol=1e-10, rtol=0)
    assert int(q[:, 0].abs().argmax()) == 1 and int(q[:, 1].abs().argmax()) == 2
    assert sliced_size(64, 0.25) == 48 and sliced_size(64, 0.3, round_to=8) == 48 and sliced_size(8, 0.99) == 1


def test_rotation_without_slicing_is_exact(tmp_path):
    dense = tiny_model("llama")
    model = copy.deepcopy(dense)
    rotate_and_slice(adapter_for(model), *sequential_bases(adapter_for(model), calibration(), 32, stage="pca"), kept=32)
    ids = calibration(2, 20, seed=3)
    torch.testing.assert_close(logits(model, ids), logits(dense, ids), rtol=1e-4, atol=1e-4)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert_reloads_equal(model, tmp_path, remote_code=True)


def test_sliced_model_shapes_counts_and_reload(tmp_path):
    dense = tiny_model("llama")
    model = copy.deepcopy(dense)
    outcome = prune("slicegpt", model, 0.25)
    kept = 24
    assert model.config.hidden_size == kept and outcome.details["hidden_size_after"] == kept
    assert model.config.head_dim == 8  # attention width is untouched
    layer = model.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (32, kept)
    assert layer.self_attn.o_proj.weight.shape == (kept, 32)
    assert layer.mlp.down_proj.weight.shape == (kept, 64)
    assert layer.attn_shortcut.shape == layer.mlp_shortcut.shape == (kept, kept)
    assert model.model.embed_tokens.weight.shape == (96, kept) and model.lm_head.weight.shape == (96, kept)
    before, after = adapter_for(dense).blocks_params(), adapter_for(model).blocks_params()
    per_block = 4 * (32 * kept * 2 + 16 * kept * 2) // 4 + 3 * 64 * kept + 2 * kept + 2 * kept * kept
    assert after == 4 * per_block
    assert 0 < 1 - after / before < 0.25  # shortcut matrices cost part of the hidden-dimension saving
    assert "hidden dimension" in outcome.details["sparsity_meaning"]
    assert_reloads_equal(model, tmp_path, remote_code=True)


def test_a_sliced_model_cannot_be_made_portable():
    model = tiny_model("llama")
    prune("slicegpt", model, 0.25)
    with pytest.raises(NotPortable, match="compact"):
        make_portable(model)
    assert model.config.twossp_structure  # untouched: the compact export still works


@pytest.mark.parametrize("family", ["qwen2", "phi"])
def test_other_families_are_refused(family):
    with pytest.raises(UnsupportedModel, match="llama"):
        prune("slicegpt", tiny_model(family), 0.25)


@pytest.mark.slow
def test_stories260k_slicegpt_pca_beats_random_basis(stories_model, stories_text):
    ws = stories_workspace(str(stories_model), str(stories_text))
    report = prune_stories(ws, "slicegpt", 0.25)
    model = report["_model"]
    assert model.config.hidden_size == 48
    assert report["sparsity_achieved"] < 0.25
    dense_ppl, pca_ppl = ppl(report)
    assert dense_ppl < pca_ppl < 1e4
    g = torch.Generator().manual_seed(0)
    random_bases = [torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))[0] for _ in range(11)]
    rand_model = copy.deepcopy(ws.model)
    rotate_and_slice(adapter_for(rand_model), random_bases[:5], random_bases[5:10], random_bases[10], kept=48)
    windows = next(iter(ws.evals.values()))[:8]
    assert perplexity(adapter_for(model), windows) < perplexity(adapter_for(rand_model), windows)


@pytest.mark.slow
def test_stories260k_sequential_bases_beat_dense_bases(stories_model, stories_text):
    """Each basis computed on the already-sliced model's signals (SliceGPT's recipe) slices better than bases
    computed once on the dense model (what keeping every dimension gives)."""
    ws = stories_workspace(str(stories_model), str(stories_text))
    adapter = adapter_for(ws.model)
    dense_bases = sequential_bases(adapter, ws.calibration, 64, stage="pca")
    sequential = sequential_bases(adapter, ws.calibration, 40, stage="pca")
    for a, b in zip(dense_bases[0][1:], sequential[0][1:], strict=True):
        assert not torch.allclose(a, b)  # downstream bases follow the slicing upstream
    windows = next(iter(ws.evals.values()))[:8]
    scores = []
    for bases in (dense_bases, sequential):
        model = copy.deepcopy(ws.model)
        rotate_and_slice(adapter_for(model), *bases, kept=40)
        scores.append(perplexity(adapter_for(model), windows))
    assert scores[1] < 0.8 * scores[0]
