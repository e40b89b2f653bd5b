"""The model card (README.md) every export format writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from twossp_core.export.card import render_card
from twossp_core.export.gguf import CARD as GGUF_CARD
from twossp_core.export.registry import run_export
from twossp_core.export.save import CARD as COMPACT_CARD
from twossp_core.models.registry import adapter_for
from twossp_core.plan.exports import FORMATS

METADATA = {
    "method": "2ssp", "sparsity_target": 0.375, "sparsity_achieved": 0.3755, "removed_attention": [1],
    "removed_mlp": [], "removed_blocks": [], "kept_ffn_neurons": 256,
    "params": {"blocks_before": 1000, "blocks_after": 625, "total_before": 2000, "total_after": 1625},
    "perplexity": [{"dataset": "eval.txt:0:10", "dense": 5.5, "pruned": 9.25}],
    "options": {"round_to": 256}, "data": {"seq_len": 64, "calibration": ["cal.txt:0:10"], "calibration_windows": 4,
                                           "eval": {"eval.txt:0:10": 2}, "doc_separator": None},
}


def _model(stories_model: Path):
    import transformers as tf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    adapter_for(model).remove_attention(1)
    return model, AutoTokenizer.from_pretrained(stories_model)


@pytest.mark.slow
def test_every_format_writes_a_card_with_the_run_and_how_to_load(stories_model, tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- x\n---\n# base\n")
    needles = {"compact": "trust_remote_code=True", "portable": 'from_pretrained("THIS_DIR")',
               "gguf": "llama-cli -m model.gguf", "decilm": "vllm serve THIS_DIR"}
    assert set(needles) == set(FORMATS)
    for fmt, needle in needles.items():
        model, tokenizer = _model(stories_model)
        run_export(fmt, model, tokenizer, tmp_path / fmt, {**METADATA, "model": str(base)}, None)
        card = (tmp_path / fmt / "README.md").read_text()
        header = card.split("---")[1]
        assert "license: apache-2.0" in header and "- twossp" in header and "- 2ssp" in header
        assert "library_name: " + ("gguf" if fmt == "gguf" else "transformers") in header
        assert needle in card, fmt
        assert "target sparsity 0.3750 (achieved 0.3755" in card and "| eval.txt:0:10 | 5.500 | 9.250 |" in card
        assert "blocks without attention (indices in the pruned model) | [1]" in card
        assert "cal.txt:0:10 (4 windows of 64 tokens)" in card and "arXiv:2501.17771" in card


def test_healed_perplexity_gets_its_own_column_when_present():
    plain = render_card(METADATA, COMPACT_CARD, None)
    assert "healed" not in plain
    healed = {**METADATA, "perplexity": [{"dataset": "eval.txt:0:10", "dense": 5.5, "pruned": 9.25, "healed": 7.125}]}
    card = render_card(healed, COMPACT_CARD, None)
    assert "| dataset | dense | pruned | healed |" in card and "| eval.txt:0:10 | 5.500 | 9.250 | 7.125 |" in card


def test_the_card_states_the_heal_net_of_its_control():
    rows = [{"dataset": "c4", "dense": 158.0, "pruned": 226.8, "healed": 152.0, "dense_healed": 150.0},
            {"dataset": "ptb", "dense": 77.9, "pruned": 165.7, "healed": 76.0, "dense_healed": 80.0}]
    card = render_card({**METADATA, "perplexity": rows}, COMPACT_CARD, None)
    assert "| dataset | dense | pruned | healed | dense healed (control) |" in card
    assert "| c4 | 158.000 | 226.800 | 152.000 | 150.000 |" in card
    # below the dense model but above the control on c4; below both on ptb
    assert "- c4: healed 152.000 is 1.3% above the control's 150.000 (and 3.8% below the unhealed dense" in card
    assert "- ptb: healed 76.000 is 5.0% below the control's 80.000 (and 2.4% below" in card
    uncontrolled = [{k: v for k, v in r.items() if k != "dense_healed"} for r in rows]
    card = render_card({**METADATA, "perplexity": uncontrolled}, COMPACT_CARD, None)
    assert "dense healed (control)" not in card and "without a control" in card


@pytest.mark.parametrize("model", ["meta-llama/Llama-3.2-1B", "/nonexistent/dir"])
def test_base_model_is_named_only_for_hub_ids(model):
    header = render_card({**METADATA, "model": model}, GGUF_CARD, None).split("---")[1]
    assert ("base_model: meta-llama/Llama-3.2-1B" in header) == (not model.startswith("/"))


def test_the_card_metadata_names_the_source_and_its_license_and_parses_with_huggingface_hub(tmp_path):
    """base_model for a hub source (a hub id, or a hub-cache snapshot), else the source's name and sha256; the
    license from the source's card or config, else `other` with a note; pipeline_tag and tags (method, sparsity)."""
    import hashlib

    from huggingface_hub import ModelCard
    from huggingface_hub.utils import validate_repo_id

    snapshot = tmp_path / "models--org--tiny-llama" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    local = tmp_path / "tiny-llama" / "hf"
    local.mkdir(parents=True)
    (local / "model.safetensors").write_bytes(b"weights")
    (local / "config.json").write_text('{"license": "mit"}')
    gguf = {"format": "gguf", "file": "tiny.Q8_0.gguf", "sha256": "ab" * 32}
    cases = {
        "hub": ({"model": "meta-llama/Llama-3.2-1B"}, "meta-llama/Llama-3.2-1B", None, "other"),
        "snapshot": ({"model": str(snapshot)}, "org/tiny-llama", None, "apache-2.0"),
        "local": ({"model": str(local)}, None,
                  {"name": "tiny-llama", "sha256": hashlib.sha256(b"weights").hexdigest(),
                   "sha256_of": "model.safetensors"}, "mit"),
        "gguf": ({"model": str(local), "source": gguf}, None,
                 {"name": "tiny-llama", "sha256": gguf["sha256"], "sha256_of": gguf["file"]}, "mit"),
    }
    for name, (fields, base_model, source_model, license_) in cases.items():
        text = render_card({**METADATA, **fields}, COMPACT_CARD, None)
        card = ModelCard(text, ignore_metadata_errors=False)
        data = card.data.to_dict()
        assert data.get("base_model") == base_model, name
        if base_model:
            validate_repo_id(base_model)
            assert data["base_model_relation"] == "finetune"
        assert data.get("source_model") == source_model, name
        assert data["license"] == license_, name
        assert ("license_name" in data and "source model's own terms apply" in text) == (license_ == "other"), name
        assert data["pipeline_tag"] == "text-generation" and data["library_name"] == "transformers"
        assert {"2ssp", "pruned", "sparsity-37.5", "custom_code"} <= set(data["tags"]), name
        assert str(tmp_path) not in text  # no local path of this machine in the card
