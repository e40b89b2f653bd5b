"""Every export format written block by block: the same files as the in-memory export of the same pruned model
(byte for byte where both modes use the same writer, tensor for tensor where the in-memory save is transformers'),
with no more than one decoder block in memory at any time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import require_data
from safetensors.torch import load_file
from tiny_models import TINY_TEXT, tiny_model, tiny_workdir, tokenizer_for

from twossp_core.export.gguf import GGUF_FILE
from twossp_core.export.registry import run_export
from twossp_core.export.streamed import INDEX_FILE
from twossp_core.models.registry import adapter_for
from twossp_core.pipeline import run_prune
from twossp_core.plan.spec import parse_spec
from twossp_core.runtime.loading import load_model
from twossp_core.runtime.offload import editing_block, load_block_by_block, offloader_of

MODES = ("in-memory", "block-by-block")
STORIES_TEXT = ("text", "tinystories-val-1000.txt")


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    """A tiny Llama with FFN widths DeciLM can hold after halving (512 → 256), and a text to prune it on."""
    root = tmp_path_factory.mktemp("wide")
    model = tiny_model("llama", hidden_size=64, intermediate_size=512)
    model.save_pretrained(root / "model")
    tokenizer_for(96).save_pretrained(root / "model")
    (root / "text.txt").write_text(TINY_TEXT)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_workdir(tmp_path_factory.mktemp("tiny"))


def _load(path: Path, mode: str):
    return load_model(str(path)) if mode == "in-memory" else load_block_by_block(str(path))


def _one_block_at_a_time(model) -> list[int]:
    """Record, after every block read, how many blocks hold real tensors (block by block; nothing in memory)."""
    offloader = offloader_of(model)
    seen: list[int] = []
    if offloader is None:
        return seen
    ensure = offloader.ensure

    def counting(layer):
        ensure(layer)
        seen.append(sum(any(not p.is_meta for p in block.parameters()) for block in offloader.adapter.layers))

    offloader.ensure = counting
    return seen


def _prune_by_hand(model, width: int | None) -> None:
    """Every kind of structural edit: a removed attention (in layer 0), a removed FFN whose attention stays, FFNs
    sliced to `width` (one width, as the portable layout needs), a deleted block."""
    adapter = adapter_for(model)
    if width is not None:
        for idx in range(adapter.num_blocks):
            with editing_block(adapter, idx):
                adapter.slice_ffn(idx, torch.arange(0, 2 * width, 2))
        adapter.set_intermediate_size(width)
    adapter.remove_attention(0)
    adapter.remove_mlp(2)
    adapter.remove_blocks([1])


def _safetensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def _same_tensors(a: Path, b: Path) -> None:
    ta, tb = _safetensors(a), _safetensors(b)
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def _same_bytes(a: Path, b: Path, names: list[str] | None = None) -> None:
    if names is None:
        names = sorted(p.name for p in a.iterdir())
        assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("fmt", ["portable", "decilm"])
def test_every_edit_exports_the_same_directory_block_by_block(wide, tmp_path, fmt):
    outs, counts, entries = {}, {}, {}
    for mode in MODES:
        model, tokenizer = _load(wide / "model", mode)
        _prune_by_hand(model, 256)
        counts[mode] = _one_block_at_a_time(model)
        outs[mode] = tmp_path / mode
        entries[mode] = run_export(fmt, model, tokenizer, outs[mode], {"method": "test"}, None)
    assert entries["in-memory"] == entries["block-by-block"]
    assert counts["block-by-block"] and max(counts["block-by-block"]) == 1  # one block in memory at any time
    config = json.loads((outs["in-memory"] / "config.json").read_text())
    assert config == json.loads((outs["block-by-block"] / "config.json").read_text())
    if fmt == "portable":  # transformers' save in memory, the streamed shards block by block: the same tensors
        assert "twossp_structure" not in config and config["num_hidden_layers"] == 3
        tensors = _safetensors(outs["block-by-block"])
        assert not tensors["model.layers.0.self_attn.q_proj.weight"].any()  # the removed attention, as zeros
        assert not tensors["model.layers.1.mlp.down_proj.weight"].any()  # the removed FFN (block 2 before)
        assert tensors["model.layers.1.self_attn.q_proj.weight"].any()
        _same_tensors(outs["in-memory"], outs["block-by-block"])
    else:  # the same writer in both modes: the same bytes
        blocks = config["block_configs"]
        assert [b["attention"]["no_op"] for b in blocks] == [True, False, False]
        assert [b["ffn"]["no_op"] for b in blocks] == [False, True, False]
        _same_bytes(outs["in-memory"], outs["block-by-block"])


def test_decilm_shards_with_an_index_and_reloads_with_the_pruned_logits(wide, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from twossp_core.export import streamed

    monkeypatch.setattr(streamed, "SHARD_BYTES", 100_000)  # several shards for the tiny model
    dense, _ = load_model(str(wide / "model"))
    _prune_by_hand(dense, 256)
    offloaded, tokenizer = load_block_by_block(str(wide / "model"))
    _prune_by_hand(offloaded, 256)
    run_export("decilm", offloaded, tokenizer, tmp_path, {"method": "test"}, None)
    assert (tmp_path / INDEX_FILE).is_file() and len(list(tmp_path.glob("model-*.safetensors"))) > 1
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), trust_remote_code=True).eval()
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, dense(ids).logits, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("weight_type", ["f32", "q8_0"])
def test_every_edit_writes_the_same_gguf_block_by_block(tmp_path, weight_type):
    """The GGUF header (every tensor's type and offset) is planned from the shapes, then the data is written one
    block at a time: the file is the in-memory one, byte for byte (the zero FFN, the zero linear attention of
    layer 0, FFN padding and q8_0's f16 fallback included)."""
    pytest.importorskip("gguf")
    stories = require_data("models", "stories260k")
    outs, counts, entries = {}, {}, {}
    for mode in MODES:
        model, tokenizer = _load(stories, mode)
        adapter = adapter_for(model)
        for idx in range(adapter.num_blocks):  # 172 neurons → 86: padded to 128 with zero neurons
            with editing_block(adapter, idx):
                adapter.slice_ffn(idx, torch.arange(0, 172, 2))
        adapter.set_intermediate_size(86)
        adapter.remove_attention(0)
        adapter.remove_mlp(2)
        adapter.remove_attention(4)
        counts[mode] = _one_block_at_a_time(model)
        outs[mode] = tmp_path / mode
        entries[mode] = run_export("gguf", model, tokenizer, outs[mode], {"method": "test"}, {"type": weight_type})
    assert entries["in-memory"] == entries["block-by-block"]
    entry = entries["block-by-block"]
    assert entry["architecture"] == "deci" and entry["zero_ffn_layers"] == [2] and entry["zero_attention_layers"] == [0]
    assert max(counts["block-by-block"]) == 1
    _same_bytes(outs["in-memory"], outs["block-by-block"], [GGUF_FILE])


# ---- whole jobs in both modes ------------------------------------------------------------------------------------
def _jobs(spec_fields: dict, tmp_path: Path) -> dict[str, dict]:
    return {mode: run_prune(parse_spec({**spec_fields, "execution": mode}), tmp_path / mode) for mode in MODES}


def _same_decisions(reports: dict[str, dict]) -> dict:
    a, b = reports["in-memory"], reports["block-by-block"]
    for key in ("removed_attention", "removed_mlp", "removed_blocks", "kept_ffn_neurons", "perplexity", "params"):
        assert a.get(key) == b.get(key), key
    assert b["memory"]["mode"] == "block-by-block" and b["memory"]["block_reads"] > 0
    assert a["export"] == b["export"]
    return b


def _tiny_job(root: Path, **fields) -> dict:
    return {"model": str(root / "model"), "sparsity": 0.4, "calibration": [str(root / "text.txt")],
            "eval": [str(root / "text.txt")], "seq_len": 32, "calibration_windows": 6, "eval_windows": 5,
            "measure_throughput": False, "device": "cpu", **fields}


@pytest.mark.parametrize(("method", "removed"), [("2ssp", "removed_attention"), ("blockpruner", "removed_mlp")])
def test_portable_job_block_by_block_writes_the_in_memory_tensors(tiny, tmp_path, method, removed):
    options = {"round_to": 1} if method == "2ssp" else {}
    reports = _jobs(_tiny_job(tiny, method=method, options=options, export="portable"), tmp_path)
    report = _same_decisions(reports)
    assert report[removed]  # rebuilt as zero submodules
    _same_tensors(tmp_path / "in-memory", tmp_path / "block-by-block")
    configs = [json.loads((tmp_path / mode / "config.json").read_text()) for mode in MODES]
    assert configs[0] == configs[1] and "twossp_structure" not in configs[1]


@pytest.mark.parametrize("method", ["2ssp", "blockpruner"])
def test_decilm_job_block_by_block_writes_the_in_memory_files(wide, tmp_path, method):
    options = {"round_to": 256} if method == "2ssp" else {}
    reports = _jobs(_tiny_job(wide, method=method, options=options, export="decilm"), tmp_path)
    report = _same_decisions(reports)
    if method == "2ssp":
        assert report["kept_ffn_neurons"] == 256  # sliced blocks, edited block by block
    else:
        assert report["removed_mlp"]  # ffn.no_op blocks
    _same_bytes(tmp_path / "in-memory", tmp_path / "block-by-block",
                [p.name for p in (tmp_path / "in-memory").iterdir() if p.name not in ("report.json", "README.md")])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["2ssp", "blockpruner"])
def test_gguf_job_block_by_block_writes_the_in_memory_file(tmp_path, method):
    pytest.importorskip("gguf")
    stories, text = require_data("models", "stories260k"), require_data(*STORIES_TEXT)
    reports = _jobs({
        "model": str(stories), "sparsity": 0.375, "method": method, "seq_len": 128,
        "calibration": [f"{text}:0:100"], "calibration_windows": 4, "eval": [f"{text}:100:200"], "eval_windows": 2,
        "doc_separator": "<|endoftext|>", "measure_throughput": False, "device": "cpu", "export": "gguf",
        "export_options": {"type": "q8_0"},
    }, tmp_path)
    report = _same_decisions(reports)
    assert report["export"]["architecture"] == "deci"  # removed submodules: per-layer structure
    _same_bytes(tmp_path / "in-memory", tmp_path / "block-by-block", [GGUF_FILE])


@pytest.fixture(scope="module")
def saved_compact(tmp_path_factory) -> Path:
    """A pruned model saved compact (every kind of edit), wide enough that its in-memory and block-by-block export
    plans lie tens of MB apart."""
    root = tmp_path_factory.mktemp("saved")
    model = tiny_model("llama", hidden_size=512, intermediate_size=2048, num_hidden_layers=8, vocab_size=8192,
                       num_attention_heads=8, num_key_value_heads=8)
    _prune_by_hand(model, 1024)
    run_export("compact", model, tokenizer_for(8192), root / "compact", {"method": "test"}, None)
    return root / "compact"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["portable", "decilm"])
def test_twossp_export_of_a_saved_directory_block_by_block(saved_compact, tmp_path, fmt, capsys):
    """`twossp export` reads a saved directory one block at a time when told to, or when it does not fit
    --max-host-memory: the files are the in-memory export's; a budget below even that is refused in one line."""
    from twossp_core.cli.main import main
    from twossp_core.plan.export_memory import export_plan
    from twossp_core.runtime.modes import RUNTIME_ALLOWANCE
    from twossp_core.runtime.offload import block_prefix
    from twossp_core.runtime.peaks import current_rss
    from twossp_core.runtime.tensor_files import index_directory

    base = ["export", "--model", str(saved_compact), "--format", fmt]
    assert main([*base, "--out", str(tmp_path / "in-memory"), "--execution", "in-memory"]) == 0
    assert f"{fmt} model written" in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "forced"), "--execution", "block-by-block"]) == 0
    assert "block-by-block" in capsys.readouterr().out
    plan = export_plan(index_directory(saved_compact), block_prefix(str(saved_compact)),
                       baseline=(current_rss() or 0) + RUNTIME_ALLOWANCE)
    assert plan.in_memory - plan.block_by_block > 40 * 10**6
    budget = (plan.in_memory + plan.block_by_block) // 2
    assert main([*base, "--out", str(tmp_path / "auto"), "--max-host-memory", str(budget)]) == 0
    captured = capsys.readouterr()
    assert "block-by-block" in captured.out and "export memory plan (block-by-block)" in captured.err
    for mode in ("forced", "auto"):
        if fmt == "decilm":
            _same_bytes(tmp_path / "in-memory", tmp_path / mode)
        else:
            _same_tensors(tmp_path / "in-memory", tmp_path / mode)
    assert main([*base, "--out", str(tmp_path / "refused"), "--max-host-memory", "1MB"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "does not fit --max-host-memory 1.00 MB" in error[0]
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())


@pytest.mark.slow
def test_export_plan_finds_the_blocks_where_the_adapter_keeps_them(saved_compact, tmp_path, monkeypatch):
    """The export plan sums each decoder block's tensors under the checkpoint prefix the family's adapter names: its
    largest block and its resident tensors are those of the loaded model; a block-by-block export reads the
    safetensors headers once."""
    from twossp_core.cli.export import stored_dtype
    from twossp_core.cli.main import main
    from twossp_core.export.load import load_pruned
    from twossp_core.plan.export_memory import export_plan
    from twossp_core.runtime import tensor_files
    from twossp_core.runtime.offload import block_prefix

    prefix = block_prefix(str(saved_compact))
    assert prefix == "model.layers."
    plan = export_plan(tensor_files.index_directory(saved_compact), prefix, baseline=0)
    config = json.loads((saved_compact / "config.json").read_text())
    model, _ = load_pruned(saved_compact, dtype=stored_dtype(config))
    layers = adapter_for(model).layers
    in_blocks = {id(p) for p in layers.parameters()}
    sizes = [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in layers]
    assert len(set(sizes)) > 1  # pruned unevenly: the largest block is one of them
    assert plan.largest_block == max(sizes)
    assert plan.resident == sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in in_blocks)

    read = []
    real = tensor_files.read_header
    monkeypatch.setattr(tensor_files, "read_header", lambda path: read.append(path) or real(path))
    out = tmp_path / "portable"
    assert main(["export", "--model", str(saved_compact), "--out", str(out), "--execution", "block-by-block"]) == 0
    assert sorted(read) == sorted(saved_compact.glob("*.safetensors"))
