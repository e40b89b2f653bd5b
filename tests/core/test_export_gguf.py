"""GGUF exports of real pruned models run in llama.cpp (llama-cpp-python) with the reported perplexity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_data

from twossp_core.data.windows import load_windows
from twossp_core.export.gguf import GGUF_FILE
from twossp_core.export.registry import run_export
from twossp_core.pipeline import run_prune
from twossp_core.plan.sources import DataSource
from twossp_core.plan.spec import parse_spec
from twossp_core.runtime.loading import load_model

pytestmark = pytest.mark.slow


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("llama-cpp-python is not installed (the llamacpp extra, part of dev)")
        pytest.skip("llama-cpp-python is not installed")
    return llama_cpp


TINYSTORIES = ("text", "tinystories-val-1000.txt")
C4 = ("text", "c4-validation-2k.jsonl")

# (model, text, method, sparsity, doc separator): 2SSP, a whole-block method, a submodule method and 2SSP with
# refit weights
CASES = {
    "stories-2ssp": ("stories260k", TINYSTORIES, "2ssp", 0.375, "<|endoftext|>"),
    "c4llama-2ssp": ("c4llama-8l", C4, "2ssp", 0.5, None),
    "c4llama-shortgpt": ("c4llama-8l", C4, "shortgpt", 0.25, None),
    "stories-blockpruner": ("stories260k", TINYSTORIES, "blockpruner", 0.375, "<|endoftext|>"),
    "stories-2ssp-refit": ("stories260k", TINYSTORIES, "2ssp-refit", 0.375, "<|endoftext|>"),
}
SEQ_LEN, WINDOWS = 256, 4


def _spec(name: str, export_options: dict | None = None):
    model, text, method, sparsity, sep = CASES[name]
    model_dir, text_path = require_data("models", model), require_data(*text)
    return parse_spec({
        "model": str(model_dir), "sparsity": sparsity, "method": method, "seq_len": SEQ_LEN,
        "calibration": [f"{text_path}:0:200"], "calibration_windows": WINDOWS,
        "eval": [f"{text_path}:200:400"], "eval_windows": WINDOWS, "doc_separator": sep,
        "measure_throughput": False, "device": "cpu", "export": "gguf", "export_options": export_options or {},
    })


def _eval_windows(spec) -> torch.Tensor:
    _, tokenizer = load_model(spec.model, device="cpu")
    return load_windows(
        DataSource.parse(spec.eval[0]), tokenizer, seq_len=SEQ_LEN, role="eval", doc_separator=spec.doc_separator,
        max_windows=WINDOWS,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    _llama_cpp()
    results = {}
    for name in CASES:
        out = tmp_path_factory.mktemp(name)
        results[name] = (run_prune(_spec(name, {"type": "f32"}), out), out)
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_f32_gguf_runs_in_llama_cpp_with_the_reported_perplexity(exported, name):
    from twossp_core.evaluation.llamacpp import gguf_perplexity

    report, out = exported[name]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", GGUF_FILE, "report.json"]
    ppl = gguf_perplexity(out / GGUF_FILE, _eval_windows(_spec(name)).numpy())
    reported = report["perplexity"][0]["pruned"]
    assert ppl == pytest.approx(reported, rel=0.005), (name, report["export"])
    assert report["perplexity"][0]["dense"] != pytest.approx(reported, rel=0.01)  # it is the pruned model
    removed = report["removed_attention"] or report["removed_mlp"]
    assert report["export"]["architecture"] == ("deci" if removed else "llama")


def test_plain_and_per_layer_architectures_are_both_covered(exported):
    archs = {exported[name][0]["export"]["architecture"] for name in CASES}
    assert archs == {"llama", "deci"}
    assert exported["stories-2ssp"][0]["removed_attention"]  # attention-free layers in the deci file


def _torch_logits(model, window: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(window[None]).logits[0].double().numpy()


def test_removed_ffn_with_kept_attention_matches_the_pruned_model(tmp_path):
    """llama.cpp's deci graph drops a layer's attention output when its FFN length is 0, and takes the head size
    from layer 0's head count: the export writes a zero FFN of width 1 and, for layer 0, a zero linear attention
    instead, so the logits stay those of the pruned model."""
    import gguf

    from twossp_core.evaluation.llamacpp import load_gguf, window_logits
    from twossp_core.models.registry import adapter_for

    _llama_cpp()
    spec = _spec("stories-2ssp")
    model, tokenizer = load_model(spec.model, device="cpu")
    adapter = adapter_for(model)
    adapter.remove_attention(0)  # layer 0 without attention
    adapter.remove_mlp(2)  # attention of block 2 stays
    adapter.remove_attention(4)  # and block 4 keeps only its FFN
    window = _eval_windows(spec)[0]
    entry = run_export("gguf", model, tokenizer, tmp_path, {"method": "test"}, {"type": "f32"})
    assert entry["architecture"] == "deci" and entry["zero_ffn_layers"] == [2]
    assert entry["zero_attention_layers"] == [0]
    assert entry["ffn_padding"] == {0: 20, 1: 20, 3: 20, 4: 20}  # 172 neurons written as 192: 20 zero neurons
    fields = gguf.GGUFReader(tmp_path / GGUF_FILE).fields
    assert list(fields["deci.feed_forward_length"].contents()) == [192, 192, 1, 192, 192]
    assert list(fields["deci.attention.head_count"].contents()) == [8, 8, 8, 8, 0]
    assert list(fields["deci.attention.head_count_kv"].contents()) == [0, 4, 4, 4, 0]
    llm = load_gguf(tmp_path / GGUF_FILE, n_ctx=SEQ_LEN, f32_cache=True)
    try:
        got = window_logits(llm, window.tolist())
    finally:
        llm.close()
    want = _torch_logits(model, window)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()  # f32 throughout: rounding only


@pytest.mark.parametrize(("weight_type", "tolerance"), [("f16", 0.01), ("bf16", 0.03), ("q8_0", 0.03)])
def test_smaller_weight_types_stay_close(exported, tmp_path, weight_type, tolerance):
    from twossp_core.evaluation.llamacpp import gguf_perplexity
    from twossp_core.export.load import load_pruned

    report, _ = exported["c4llama-shortgpt"]
    spec = _spec("c4llama-shortgpt")
    f32 = tmp_path / "f32"
    # the pruned model again, from its own report: shortgpt deletes the same blocks
    model, tokenizer = load_pruned(spec.model)
    from twossp_core.models.registry import adapter_for

    adapter_for(model).remove_blocks(report["removed_blocks"])
    run_export("gguf", model, tokenizer, f32, {"method": "shortgpt"}, {"type": weight_type})
    size = (f32 / GGUF_FILE).stat().st_size
    ppl = gguf_perplexity(f32 / GGUF_FILE, _eval_windows(spec).numpy())
    assert ppl == pytest.approx(report["perplexity"][0]["pruned"], rel=tolerance)
    assert size < (exported["c4llama-shortgpt"][1] / GGUF_FILE).stat().st_size * 0.6


@pytest.mark.parametrize("model_name", ["stories260k", "c4llama-8l"])
def test_llama_cpp_tokenizes_like_transformers(tmp_path, model_name):
    llama_cpp = _llama_cpp()
    model_dir = require_data("models", model_name)
    model, tokenizer = load_model(str(model_dir), device="cpu")
    run_export("gguf", model, tokenizer, tmp_path, {"method": "none"}, {"type": "f16"})
    llm = llama_cpp.Llama(model_path=str(tmp_path / GGUF_FILE), vocab_only=True, verbose=False)
    text_file = require_data(*TINYSTORIES)
    docs = [d.strip() for d in text_file.read_text().split("<|endoftext|>") if d.strip()][:30]
    docs += ["Hello world! It's 3:45pm, isn't it?", "naïve café — 東京 🙂", "line one\nline two\n\ttabbed"]
    for doc in docs:
        want = tokenizer(doc, add_special_tokens=False)["input_ids"]
        got = llm.tokenize(doc.encode(), add_bos=False, special=False)
        assert got == want, doc
    bos = tokenizer(docs[0])["input_ids"]
    assert llm.tokenize(docs[0].encode(), add_bos=True) == bos


def test_a_sliding_window_model_declares_its_window_as_context_and_is_exact_within_it(tmp_path):
    """llama.cpp attends to every position: a Mistral with a 16-position window is exported with a context of 16,
    where both compute the same thing (the DeciLM layout likewise, with no `sliding_window` left)."""
    import gguf
    from tiny_models import tiny_model
    from transformers import AutoTokenizer

    from twossp_core.evaluation.llamacpp import load_gguf, window_logits
    from twossp_core.models.registry import adapter_for

    _llama_cpp()
    tokenizer = AutoTokenizer.from_pretrained(require_data("models", "stories260k"))  # a BPE vocabulary GGUF holds

    # a vocabulary the tokenizer covers, and an FFN width the DeciLM layout holds
    model = tiny_model("mistral", vocab_size=len(tokenizer), intermediate_size=256)
    assert model.config.sliding_window == 16 and model.config.max_position_embeddings == 128
    adapter_for(model).remove_attention(1)
    entry = run_export("gguf", model, tokenizer, tmp_path / "gguf", {"method": "test"}, {"type": "f32"})
    assert entry["context_length"] == 16 and entry["context_capped_by_sliding_window"]
    fields = gguf.GGUFReader(tmp_path / "gguf" / GGUF_FILE).fields
    assert fields["deci.context_length"].contents() == 16
    window = torch.randint(3, model.config.vocab_size, (16,), generator=torch.Generator().manual_seed(0))
    llm = load_gguf(tmp_path / "gguf" / GGUF_FILE, n_ctx=16, f32_cache=True)
    try:
        got = window_logits(llm, window.tolist())
    finally:
        llm.close()
    want = _torch_logits(model, window)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max()

    decilm = run_export("decilm", model, tokenizer, tmp_path / "decilm", {"method": "test"}, {})
    config = json.loads((tmp_path / "decilm" / "config.json").read_text())
    assert decilm["context_length"] == config["max_position_embeddings"] == 16 and config["sliding_window"] is None

    llama = tiny_model("llama", vocab_size=len(tokenizer), intermediate_size=256)
    plain = run_export("gguf", llama, tokenizer, tmp_path / "llama", {"method": "test"}, {"type": "f32"})
    assert plain["context_length"] == 128 and not plain["context_capped_by_sliding_window"]
