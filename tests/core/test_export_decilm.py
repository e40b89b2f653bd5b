"""The DeciLM (Nemotron-NAS) export: block_configs vLLM reads, reloads in transformers with the compact logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import require_data
from tiny_models import tiny_model, tokenizer_for

from twossp_core.cli.main import main
from twossp_core.errors import InvalidSpec
from twossp_core.export.decilm_code.configuration_decilm import ffn_mult_to_intermediate_size
from twossp_core.export.load import load_pruned
from twossp_core.export.registry import run_export
from twossp_core.models.registry import adapter_for
from twossp_core.plan.spec import parse_spec
from twossp_core.preflight import check_model


def _decilm(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=True).eval()


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _wide_llama():
    """A tiny Llama whose FFN widths DeciLM can hold (multiples of 256; the tiny hidden size is what
    makes it cheap, the widths follow the ffn_mult rule exactly as for a large model)."""
    import transformers as tf
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=512, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    return model


def test_every_submodule_kind_reloads_with_the_pruned_logits(tmp_path):
    model = _wide_llama()
    adapter = adapter_for(model)
    for idx in range(adapter.num_blocks):
        adapter.slice_ffn(idx, torch.arange(0, 512, 2))  # 256 neurons
    adapter.set_intermediate_size(256)
    adapter.remove_attention(0)
    adapter.remove_mlp(2)  # attention kept
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    want = _logits(model, ids)
    run_export("compact", model, tokenizer_for(96), tmp_path / "compact", {"method": "test"}, None)
    entry = run_export("decilm", model, tokenizer_for(96), tmp_path / "decilm", {"method": "test"}, None)
    config = json.loads((tmp_path / "decilm" / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["model_type"] == "nemotron-nas"
    blocks = config["block_configs"]
    assert [b["attention"]["no_op"] for b in blocks] == [True, False, False, False]
    assert [b["ffn"]["no_op"] for b in blocks] == [False, False, True, False]
    assert blocks[1]["attention"]["n_heads_in_group"] == 2  # 4 heads over 2 key/value heads
    assert blocks[0]["attention"]["n_heads_in_group"] is None and blocks[2]["ffn"]["ffn_mult"] is None
    # the width as vLLM and llama.cpp's converter compute it from ffn_mult
    assert {ffn_mult_to_intermediate_size(b["ffn"]["ffn_mult"], 64) for b in blocks if b["ffn"]["ffn_mult"]} == {256}
    assert entry["stored_params"] == sum(p.numel() for p in model.parameters())
    compact, _ = load_pruned(tmp_path / "compact")
    reloaded = _decilm(tmp_path / "decilm")
    assert torch.equal(_logits(reloaded, ids), _logits(compact, ids))
    assert torch.allclose(_logits(reloaded, ids), want, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "decilm").glob("*.py")) == ["configuration_decilm.py",
                                                                          "modeling_decilm.py"]
    assert "vllm serve" in (tmp_path / "decilm" / "README.md").read_text()
    (tmp_path / "new").touch()  # every exported file readable like any new file (the weights were 0600)
    new_mode = (tmp_path / "new").stat().st_mode & 0o777
    assert {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "decilm").iterdir()} == {
        f.name: new_mode for f in (tmp_path / "decilm").iterdir()
    }


@pytest.mark.slow
def test_real_model_pruned_with_round_to_256_matches_its_compact_export(tmp_path, capsys):
    c4llama, text = require_data("models", "c4llama-8l"), require_data("text", "c4-validation-2k.jsonl")
    compact, decilm = tmp_path / "compact", tmp_path / "decilm"
    assert main([
        "prune", "--model", str(c4llama), "--sparsity", "0.25", "--option", "round_to=256",
        "--calibration", f"{text}:0:100", "--calibration-windows", "4", "--eval", f"{text}:100:200",
        "--eval-windows", "2", "--seq-len", "128", "--no-throughput", "--no-progress", "--out", str(compact),
    ]) == 0
    report = json.loads((compact / "report.json").read_text())
    assert report["kept_ffn_neurons"] == 256 and report["removed_attention"]
    assert main(["export", "--model", str(compact), "--format", "decilm", "--out", str(decilm)]) == 0
    assert "decilm model written" in capsys.readouterr().out
    card = (decilm / "README.md").read_text()
    assert f"{report['perplexity'][0]['pruned']:.3f}" in card and "2501.17771" in card
    ids = torch.randint(0, 4096, (1, 64), generator=torch.Generator().manual_seed(0))
    model, _ = load_pruned(compact)
    assert torch.equal(_logits(_decilm(decilm), ids), _logits(model, ids))


def test_widths_decilm_cannot_hold_are_refused_before_running(stories_model, stories_text):
    base = {"model": str(stories_model), "sparsity": 0.375, "export": "decilm",
            "calibration": [f"{stories_text}:0:10"], "eval": [f"{stories_text}:10:20"],
            "doc_separator": "<|endoftext|>"}
    with pytest.raises(InvalidSpec, match="multiples of 256.*96.*round_to=256"):
        check_model(parse_spec(base))  # 2SSP keeps 96 of 172 neurons
    with pytest.raises(InvalidSpec, match="multiples of 256.*172"):
        check_model(parse_spec({**base, "method": "shortgpt"}))  # whole blocks: the FFNs keep 172


def test_other_families_are_refused_with_the_supported_list(tmp_path):
    model = tiny_model("qwen2")
    for fmt in ("gguf", "decilm"):
        with pytest.raises(InvalidSpec, match="supports the model types llama, mistral; this model is 'qwen2'"):
            run_export(fmt, model, tokenizer_for(96), tmp_path / fmt, {"method": "test"}, None)
        assert not (tmp_path / fmt).exists()


def test_rotated_models_are_refused_for_every_format_but_compact():
    for fmt in ("portable", "gguf", "decilm"):
        with pytest.raises(InvalidSpec, match="slicegpt"):
            parse_spec({"model": "m", "sparsity": 0.3, "method": "slicegpt", "export": fmt})
    with pytest.raises(InvalidSpec, match="export options for gguf: type"):
        parse_spec({"model": "m", "sparsity": 0.3, "export": "gguf", "export_options": {"type": "q4_0"}})
