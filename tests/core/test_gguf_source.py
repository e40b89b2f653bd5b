"""GGUF files as model sources: read through transformers' GGUF reader into plain models, refused in one line when
unreadable, recorded in the report and the model card, written once as a plain directory by `convert-gguf`.

The GGUF files are the real test models written by our own exporter (llama architecture, dense): Q8_0 stores the
matrices quantized, as a downloaded GGUF does, and F32 round-trips the weights exactly."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_data

from twossp_core.cli.main import main
from twossp_core.data.windows import load_windows
from twossp_core.errors import ModelNotFound, UnsupportedModel
from twossp_core.export.gguf import write_gguf
from twossp_core.gguf_source import (
    GGUF_KEY,
    SOURCE_KEY,
    check_readable,
    gguf_config,
    gguf_file_of,
    read_header,
)
from twossp_core.pipeline import run_prune
from twossp_core.plan.memory import DTYPE_BYTES, load_bytes
from twossp_core.plan.shape import model_shape
from twossp_core.plan.sources import DataSource
from twossp_core.plan.spec import parse_spec
from twossp_core.preflight import local_config
from twossp_core.runtime.loading import load_model

C4 = ("text", "c4-validation-2k.jsonl")
SEQ_LEN, WINDOWS = 128, 2


def _gguf_of(model_name: str, weight_type: str, out: Path, chat_template: str | None = None) -> Path:
    model, tokenizer = load_model(str(require_data("models", model_name)), device="cpu")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    path = out / f"{model_name}.{weight_type.upper()}.gguf"
    write_gguf(model, tokenizer, path, {"model": model_name}, weight_type)
    return path


@pytest.fixture(scope="module")
def c4llama_q8(tmp_path_factory) -> Path:
    return _gguf_of("c4llama-8l", "q8_0", tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def stories_f32(tmp_path_factory) -> Path:
    return _gguf_of("stories260k", "f32", tmp_path_factory.mktemp("gguf"))


def _require_llama_cpp() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("llama-cpp-python is not installed (the llamacpp extra, part of dev)")
        pytest.skip("llama-cpp-python is not installed")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _transformers_gguf(path: Path):
    """transformers' own GGUF load, without our code in between."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


@pytest.mark.slow
def test_the_header_gives_what_transformers_builds(c4llama_q8):
    from gguf import GGUFReader
    from transformers import AutoConfig

    header = read_header(c4llama_q8)
    assert header.architecture == "llama" and header.quantization() == "Q8_0"
    assert header.tensor_types() == {"Q8_0": 57, "F32": 17}  # 7 matrices x 8 blocks + the embeddings; the norms
    reference = GGUFReader(c4llama_q8)
    assert [t.name for t in header.tensors] == [t.name for t in reference.tensors]
    assert [t.type_id for t in header.tensors] == [int(t.tensor_type) for t in reference.tensors]
    for key, value in header.metadata.items():
        assert reference.fields[key].contents() == value, key
    for key, length in header.array_lengths.items():
        assert len(reference.fields[key].data) == length, key
    cfg, config = gguf_config(header), AutoConfig.from_pretrained(str(c4llama_q8.parent), gguf_file=c4llama_q8.name)
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "tie_word_embeddings", "max_position_embeddings", "head_dim"):
        assert cfg[key] == getattr(config, key), key
    assert cfg[GGUF_KEY]["quantization"] == "Q8_0"


def _crafted(path: Path, arch: str, tensor_type: str) -> Path:
    """A GGUF file whose header names `arch` and holds one 32 x 32 tensor stored as `tensor_type`."""
    import gguf

    qtype = gguf.GGMLQuantizationType[tensor_type]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((32, 32 // block * size), dtype=np.uint8), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("arch", "tensor_type", "message"), [
    ("gpt2", "F16", "GGUF architecture 'gpt2' cannot be pruned from a GGUF file; readable: gemma2, llama, mistral"),
    ("deci", "F32", "GGUF architecture 'deci' cannot be pruned"),
    ("llama", "Q8_1", "GGUF tensor type Q8_1 cannot be dequantized"),
])
def test_what_we_cannot_read_is_one_line_before_any_work(tmp_path, capsys, arch, tensor_type, message):
    path = _crafted(tmp_path / "model.gguf", arch, tensor_type)
    with pytest.raises(UnsupportedModel, match=message.replace("(", r"\(")):
        check_readable(read_header(path))
    text = require_data(*C4)
    code = main(["prune", "--model", str(path), "--sparsity", "0.25", "--out", str(tmp_path / "out"),
                 "--no-progress", "--calibration", f"{text}:0:10", "--eval", f"{text}:10:20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_gguf_is_named(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ModelNotFound, match="broken.gguf: not a complete GGUF file"):
        read_header(path)
    path.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ModelNotFound, match="broken.gguf: not a GGUF file"):
        read_header(path)


def test_a_directory_holding_one_gguf_is_that_file_and_several_are_refused(tmp_path, stories_f32):
    one = tmp_path / "one"
    one.mkdir()
    (one / stories_f32.name).symlink_to(stories_f32)
    (one / "README.md").write_text("# notes\n")
    assert gguf_file_of(one) == one / stories_f32.name
    assert local_config(str(one))["num_hidden_layers"] == 5
    (one / "other.gguf").symlink_to(stories_f32)
    with pytest.raises(ModelNotFound, match="holds 2 .gguf files .* and no config.json; pass one file"):
        local_config(str(one))
    (one / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert gguf_file_of(one) is None  # a Hugging Face directory that also holds GGUF files is read as a directory


@pytest.mark.slow
def test_the_loaded_model_is_plain_in_the_requested_dtype_with_the_exact_weights(stories_f32):
    reference, _ = load_model(str(require_data("models", "stories260k")), device="cpu")
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    model, tokenizer = load_model(str(stories_f32), device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    assert torch.equal(_logits(model, ids), _logits(reference, ids))  # F32 in, the very same model out
    half, _ = load_model(str(stories_f32), dtype="bfloat16", device="cpu")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    text = "Once upon a time, 12345 little foxes said hello."
    assert tokenizer(text).input_ids == load_model(str(require_data("models", "stories260k")))[1](text).input_ids


@pytest.mark.slow
def test_a_gguf_model_runs_in_memory_only_and_its_plan_counts_the_dequantization(tmp_path, capsys, c4llama_q8):
    cfg = local_config(str(c4llama_q8))
    shape = model_shape(cfg)
    for dtype, item in DTYPE_BYTES.items():
        assert load_bytes(cfg, shape, item) == shape.total_params * (4 + item), dtype
    text = require_data(*C4)
    code = main(["prune", "--model", str(c4llama_q8), "--sparsity", "0.25", "--execution", "block-by-block",
                 "--calibration", f"{text}:0:10", "--eval", f"{text}:10:20", "--out", str(tmp_path / "out"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "a GGUF file runs in memory only, not block-by-block" in err[0] and "twossp convert-gguf" in err[0]


def _perplexity(logits: torch.Tensor, windows: torch.Tensor) -> float:
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).double(), windows[:, 1:].flatten())
    return math.exp(nll.item())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["compact", "portable", "gguf", "decilm"])
def test_every_export_format_works_from_a_gguf_model_and_records_its_source(tmp_path, c4llama_q8, fmt):
    from transformers import AutoModelForCausalLM

    from twossp_core.export.load import load_pruned

    text = require_data(*C4)
    out = tmp_path / fmt
    spec = parse_spec({
        "model": str(c4llama_q8), "sparsity": 0.25, "method": "2ssp", "options": {"round_to": 256},
        "seq_len": SEQ_LEN, "calibration": [f"{text}:0:100"], "calibration_windows": 4,
        "eval": [f"{text}:100:200"], "eval_windows": WINDOWS, "measure_throughput": False, "device": "cpu",
        "export": fmt, "export_options": {"type": "f32"} if fmt == "gguf" else {},
    })
    report = run_prune(spec, out)
    source = report["source"]
    assert source["file"] == c4llama_q8.name and source["quantization"] == "Q8_0"
    assert source["sha256"] == hashlib.sha256(c4llama_q8.read_bytes()).hexdigest()
    assert source["tensor_types"] == {"Q8_0": 57, "F32": 17}
    assert json.loads((out / "report.json").read_text())["source"] == source
    card = (out / "README.md").read_text()
    assert f"read from the GGUF file `{c4llama_q8.name}` (Q8_0, sha256 `{source['sha256']}`)" in card
    pruned = report["perplexity"][0]["pruned"]
    _, tokenizer = load_model(str(c4llama_q8), device="cpu")
    windows = load_windows(DataSource.parse(spec.eval[0]), tokenizer, seq_len=SEQ_LEN, role="eval",
                           max_windows=WINDOWS)
    if fmt == "gguf":
        from twossp_core.evaluation.llamacpp import gguf_perplexity

        _require_llama_cpp()
        assert gguf_perplexity(out / "model.gguf", windows, threads=1) == pytest.approx(pruned, rel=0.005)
        return
    if fmt == "decilm":
        model = AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True).eval()
    else:
        model, _ = load_pruned(out)
        assert json.loads((out / "config.json").read_text())["twossp"]["source"] == source
    assert _perplexity(_logits(model, windows), windows) == pytest.approx(pruned, rel=1e-5)


@pytest.mark.slow
def test_convert_gguf_writes_a_directory_with_transformers_gguf_logits(tmp_path, capsys):
    gguf = _gguf_of("c4llama-8l", "q8_0", tmp_path, chat_template="{{ messages[0]['content'] }}")
    out = tmp_path / "converted"
    assert main(["convert-gguf", str(gguf), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    config = json.loads((out / "config.json").read_text())
    record = config[SOURCE_KEY]
    assert record["file"] == gguf.name and record["quantization"] == "Q8_0"
    assert record["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert "quantization_config" not in config and config["dtype"] == "float32"
    model, tokenizer = load_model(str(out), device="cpu")
    ids = torch.randint(0, 4096, (2, 64), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(model, ids), _logits(_transformers_gguf(gguf), ids))
    assert tokenizer.chat_template == "{{ messages[0]['content'] }}"
    # a run on the directory records the GGUF file it was made from
    text = require_data(*C4)
    spec = parse_spec({"model": str(out), "sparsity": 0.25, "method": "shortgpt", "seq_len": SEQ_LEN,
                       "calibration": [f"{text}:0:50"], "calibration_windows": 2, "eval": [f"{text}:100:150"],
                       "eval_windows": 1, "measure_throughput": False, "device": "cpu"})
    assert run_prune(spec, tmp_path / "pruned")["source"] == record
    assert main(["convert-gguf", str(gguf), "--out", str(out), "--no-progress"]) == 2  # not over a full directory


def test_a_byte_level_tokenizer_that_splits_digits_first_is_written_as_smollm():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from twossp_core.errors import InvalidSpec
    from twossp_core.export.gguf_vocab import gguf_vocab

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))

    def pre(*parts) -> str:
        backend.pre_tokenizer = pre_tokenizers.Sequence(list(parts))
        return gguf_vocab(PreTrainedTokenizerFast(tokenizer_object=backend), len(vocab)).pre

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    assert pre(pre_tokenizers.Digits(individual_digits=True), byte_level) == "smollm"
    assert pre(byte_level) == "gpt-2"
    with pytest.raises(InvalidSpec, match="not one llama.cpp names"):  # digit runs kept together: no llama.cpp name
        pre(pre_tokenizers.Digits(individual_digits=False), byte_level)
