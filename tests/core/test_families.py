"""Every supported family: 2SSP's exact parameter counts, prune → save → reload → same logits, and deletion of
emptied blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import FAMILIES, tiny_model, tokenizer_for

from twossp_core.errors import UnsupportedModel
from twossp_core.export.load import load_pruned
from twossp_core.export.registry import run_export
from twossp_core.export.save import save_pruned
from twossp_core.models.registry import adapter_for, supported_model_types
from twossp_core.pruning.base import PruneContext
from twossp_core.pruning.submodules import delete_emptied_blocks
from twossp_core.pruning.twossp.config import TwoSSPConfig
from twossp_core.pruning.twossp.method import TwoSSP

SPARSITY = 0.4


def _windows(vocab: int, n: int = 4, length: int = 24, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g)


def _norm_params(layer: torch.nn.Module, names: tuple[str, ...]) -> int:
    return sum(p.numel() for n in names for p in getattr(layer, n).parameters())


def _prune(family: str):
    model = tiny_model(family)
    adapter = adapter_for(model)
    before = {
        "blocks": adapter.blocks_params(),
        "total": adapter.total_params(),
        "attn": adapter.attention_params(0),
        "attn_norms": _norm_params(adapter.layers[0], adapter.attention_norms),
        "d_int": adapter.intermediate_size,
        "per_neuron": (adapter.mlp_params(0) - sum(
            p.numel() for n, p in adapter.mlp(0).named_parameters() if n.endswith("bias") and "fc2" in n
        )) // adapter.intermediate_size,
    }
    windows = _windows(model.config.vocab_size)
    method = TwoSSP(TwoSSPConfig())
    plan = method.plan(PruneContext(adapter=adapter, calibration=windows), SPARSITY)
    outcome = method.prune(PruneContext(adapter=adapter, calibration=windows), SPARSITY)
    return model, adapter, before, plan, outcome, windows


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_counts_are_exact(family):
    model, adapter, before, plan, outcome, _ = _prune(family)
    blocks = adapter.num_blocks
    assert len(outcome.removed_attention) == plan.num_attention > 0
    assert outcome.kept_ffn_neurons == plan.kept_neurons < before["d_int"]
    assert model.config.intermediate_size == plan.kept_neurons
    for idx in range(blocks):
        assert adapter.down_projection(idx).in_features == plan.kept_neurons
    removed_ffn = blocks * (before["d_int"] - plan.kept_neurons) * before["per_neuron"]
    removed_attn = plan.num_attention * (before["attn"] + before["attn_norms"])
    assert adapter.blocks_params() == before["blocks"] - removed_ffn - removed_attn
    assert adapter.total_params() == before["total"] - removed_ffn - removed_attn
    # achieved sparsity within one neuron in every block (+ the removed attention norms) of the target, plus
    # the move of K to the nearest multiple of round_to (at most round_to / 2 neurons)
    assert plan.kept_neurons % TwoSSPConfig().round_to == 0
    removed = before["blocks"] - adapter.blocks_params()
    neurons = 1 + TwoSSPConfig().round_to / 2
    slack = blocks * before["per_neuron"] * neurons + plan.num_attention * before["attn_norms"]
    assert abs(removed - plan.target_params) <= slack


def assert_refused_without_remote_code(path: Path) -> None:
    """A compact directory must never load as its base architecture (the removed modules would come back at
    random): plain transformers refuses it and says how to load it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for auto in (AutoModelForCausalLM, AutoConfig):
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            auto.from_pretrained(path)


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_model_reloads_both_ways_with_identical_logits(family, tmp_path):
    model, adapter, _, _, outcome, windows = _prune(family)
    with torch.no_grad():
        expected = model(windows[:2]).logits
    dense_size = sum(p.numel() for p in tiny_model(family).parameters())
    save_pruned(model, tokenizer_for(model.config.vocab_size), tmp_path, {"method": "2ssp"})

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["twossp"]["method"] == "2ssp"
    assert config["twossp_structure"]["removed_attention"] == outcome.removed_attention
    assert config["model_type"] == f"twossp_{family}" and config["architectures"] == ["TwosspPrunedForCausalLM"]
    (tmp_path / "new").touch()  # every file readable like any new file (the weights were 0600)
    assert {f.name: f.stat().st_mode & 0o777 for f in tmp_path.iterdir()} == {
        f.name: (tmp_path / "new").stat().st_mode & 0o777 for f in tmp_path.iterdir()
    }
    (tmp_path / "new").unlink()
    assert_refused_without_remote_code(tmp_path)

    ours, _ = load_pruned(tmp_path)
    with torch.no_grad():
        assert torch.equal(ours(windows[:2]).logits, expected)
    assert adapter_for(ours).removed_attention == outcome.removed_attention
    assert ours.config.model_type == family

    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert plain.config.model_type == config["model_type"]
    with torch.no_grad():
        assert torch.equal(plain(windows[:2]).logits, expected)
    # only what remains is stored
    stored = sum(p.numel() for p in plain.parameters())
    assert stored == adapter.total_params() < dense_size


@pytest.mark.parametrize("family", FAMILIES)
def test_portable_export_loads_as_the_plain_architecture_with_identical_logits(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model, adapter, before, plan, outcome, windows = _prune(family)
    adapter.remove_mlp(2)  # a removed FFN too, as BlockPruner and EvoPress leave them
    with torch.no_grad():
        expected = model(windows[:2]).logits
    size = adapter.total_params()
    run_export("portable", model, tokenizer_for(model.config.vocab_size), tmp_path, {"method": "2ssp"}, None)

    config = json.loads((tmp_path / "config.json").read_text())
    assert "twossp_structure" not in config and "auto_map" not in config
    assert not (tmp_path / "modeling_twossp.py").exists()
    assert config["intermediate_size"] == plan.kept_neurons
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # no remote code
    with torch.no_grad():
        torch.testing.assert_close(plain(windows[:2]).logits, expected, rtol=1e-5, atol=1e-5)
    # the removed submodules are stored as zeros: the attention modules (and their norms) and one FFN
    fresh = adapter_for(tiny_model(family))
    rebuilt = plan.num_attention * (before["attn"] + before["attn_norms"])
    rebuilt += plan.kept_neurons * before["per_neuron"] + _norm_params(fresh.layers[0], fresh.mlp_norms)
    rebuilt += sum(p.numel() for n, p in fresh.mlp(0).named_parameters() if n.endswith("bias") and "fc2" in n)
    assert sum(p.numel() for p in plain.parameters()) == size + rebuilt


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("partial", [False, True])
def test_emptied_blocks_are_deleted_and_reload_as_plain_architecture(family, partial, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model(family).eval()
    adapter = adapter_for(model)
    blocks = adapter.num_blocks
    attention, mlp = [1, 3] if partial else [1], [1]
    for idx in attention:
        adapter.remove_attention(idx)
    adapter.remove_mlp(1)
    ids = _windows(model.config.vocab_size)[:2]
    with torch.no_grad():
        expected = model(ids).logits
    params = adapter.total_params()
    leftover = sum(p.numel() for p in adapter.layers[1].parameters())  # phi's shared input norm stays until now

    kept = delete_emptied_blocks(adapter, attention, mlp)
    assert kept == ([3] if partial else [], [], [1])
    assert adapter.num_blocks == model.config.num_hidden_layers == blocks - 1
    assert adapter.removed_attention == ([2] if partial else [])  # renumbered after the deleted block
    assert adapter.total_params() == params - leftover
    with torch.no_grad():
        assert torch.equal(model(ids).logits, expected)
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types is not None:
        assert len(layer_types) == blocks - 1

    save_pruned(model, tokenizer_for(model.config.vocab_size), tmp_path, {"method": "test"})
    assert (tmp_path / "modeling_twossp.py").exists() == partial
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=partial).eval()
    prompt = ids[:1, :8]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, expected, rtol=1e-5, atol=1e-5)
        cached = plain.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True)
        uncached = plain.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("removed", [[0], [0, 2], [3]])
def test_removed_attention_keeps_generation_consistent_with_cache(removed):
    model = tiny_model("llama")
    adapter = adapter_for(model)
    for idx in removed:
        adapter.remove_attention(idx)
    prompt = _windows(model.config.vocab_size)[:1, :8]
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_unsupported_architecture_is_a_clear_error():
    import transformers as tf

    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(UnsupportedModel) as err:
        adapter_for(model)
    assert "gpt2" in str(err.value)
    for name in supported_model_types():
        assert name in str(err.value)
