"""Block-by-block execution takes the same decisions and measures the same perplexities as the in-memory model,
holds one block at a time, writes the same exported weights, and jobs that cannot fit their budgets are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_workdir

from twossp_core.cli.main import main
from twossp_core.errors import InvalidSpec
from twossp_core.evaluation.perplexity import perplexity
from twossp_core.export.streamed import INDEX_FILE, write_weights_by_block
from twossp_core.models.registry import adapter_for
from twossp_core.pipeline import run_prune
from twossp_core.plan.methods import method_config
from twossp_core.plan.spec import parse_spec
from twossp_core.pruning.base import PruneContext
from twossp_core.pruning.registry import method_class
from twossp_core.runtime.loading import load_model
from twossp_core.runtime.offload import load_block_by_block, offloader_of


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tiny_workdir(tmp_path_factory.mktemp("bbb-job"))


def _pair(path: Path):
    dense, _ = load_model(str(path))
    offloaded, _ = load_block_by_block(str(path))
    return adapter_for(dense), adapter_for(offloaded)


def _windows(n: int = 4, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, 90, (n, seq), generator=torch.Generator().manual_seed(0))


def _outcome_key(outcome):
    return outcome.removed_attention, outcome.removed_mlp, outcome.removed_blocks, outcome.kept_ffn_neurons


@pytest.mark.parametrize(("family", "method"), [
    ("llama", "2ssp"), ("gemma2", "2ssp"), ("phi", "2ssp"), ("llama", "shortgpt"), ("llama", "blockpruner"),
])
def test_same_decisions_and_perplexities_as_in_memory(models, family, method):
    dense, offloaded = _pair(models[family])
    windows = _windows()
    assert perplexity(offloaded, windows, batch_size=4) == perplexity(dense, windows, batch_size=4)
    options = {"round_to": 1, "stage2_windows": 2} if method == "2ssp" else {}
    outcomes = [method_class(method)(method_config(method, options)).prune(PruneContext(adapter=a, calibration=windows),
                                                                           0.4) for a in (dense, offloaded)]
    assert _outcome_key(outcomes[0]) == _outcome_key(outcomes[1])
    assert outcomes[0].details == outcomes[1].details  # removal perplexities, scores: bit-identical
    assert perplexity(offloaded, windows, batch_size=4) == perplexity(dense, windows, batch_size=4)
    # nothing of the blocks stays in memory but the one block last used
    real = [i for i, layer in enumerate(offloaded.layers) if any(not p.is_meta for p in layer.parameters())]
    assert len(real) <= 1


@pytest.mark.parametrize(("family", "options"), [
    ("llama", {}), ("gemma2", {}), ("llama", {"stage2_on_refit": True}), ("llama", {"selection": "norm"}),
])
def test_2ssp_refit_block_by_block_gives_the_in_memory_prune(models, family, options, tmp_path):
    dense, offloaded = _pair(models[family])
    windows = _windows()
    options = {"round_to": 1, **options}
    outcomes = [method_class("2ssp-refit")(method_config("2ssp-refit", options)).prune(
        PruneContext(adapter=a, calibration=windows), 0.4) for a in (dense, offloaded)]
    assert _outcome_key(outcomes[0]) == _outcome_key(outcomes[1]) and outcomes[0].removed_attention
    fits = [o.details["refit"] for o in outcomes]
    for key in ("error_sliced", "error_refit", "rejected_blocks", "target", "stage1_in_refit_pass"):
        assert fits[0][key] == fits[1][key], key
    assert fits[1]["dense_blocks_device"] == "checkpoint" and fits[1]["dense_blocks_bytes"] == 0
    assert outcomes[0].details["removal_perplexity"] == outcomes[1].details["removal_perplexity"]
    assert perplexity(offloaded, windows, batch_size=4) == perplexity(dense, windows, batch_size=4)
    write_weights_by_block(offloaded.model, tmp_path)
    written = load_file(str(tmp_path / "model.safetensors"))
    compared = [name for name in dense.model.state_dict() if name in written]
    assert any(".mlp." in name for name in compared) and len(compared) >= len(written) - 1
    for name in compared:
        assert torch.equal(written[name], dense.model.state_dict()[name]), name
    real = [i for i, layer in enumerate(offloaded.layers) if any(not p.is_meta for p in layer.parameters())]
    assert len(real) <= 1


def test_passes_read_each_block_once_and_chunks_give_the_same_numbers(models):
    dense, offloaded = _pair(models["llama"])
    offloader = offloader_of(offloaded.model)
    windows = _windows(8)
    expected = perplexity(dense, windows, batch_size=2)
    before = offloader.block_reads
    assert perplexity(offloaded, windows, batch_size=2) == expected
    assert offloader.block_reads - before == offloaded.num_blocks  # one read per block, not per batch
    offloader.window_budget = 3  # one batch of 2 per pass: four passes over the blocks
    before = offloader.block_reads
    assert perplexity(offloaded, windows, batch_size=2) == expected
    assert offloader.block_reads - before == 4 * offloaded.num_blocks


def test_streamed_shards_load_as_the_same_model(models, tmp_path):
    dense, offloaded = _pair(models["gemma2"])  # tied embeddings: written once
    names = write_weights_by_block(offloaded.model, tmp_path, shard_bytes=20_000)
    assert len(names) > 1 and (tmp_path / INDEX_FILE).is_file()
    offloaded.model.config.save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    batch = _windows(2)
    with torch.no_grad():
        assert torch.equal(reloaded(batch).logits, dense.model(batch).logits)


def _spec(workdir: Path, **kw):
    return parse_spec({
        "model": str(workdir / "model"), "sparsity": 0.4, "calibration": [str(workdir / "text.txt")],
        "eval": [str(workdir / "text.txt")], "seq_len": 32, "calibration_windows": 6, "eval_windows": 5,
        "measure_throughput": False, **kw,
    })


def test_job_in_both_modes_reports_memory_and_writes_the_same_model(workdir, tmp_path):
    reports = {}
    for mode in ("in-memory", "block-by-block"):
        reports[mode] = run_prune(_spec(workdir, execution=mode), tmp_path / mode)
    a, b = reports["in-memory"], reports["block-by-block"]
    for key in ("removed_attention", "kept_ffn_neurons", "perplexity", "method_details", "params"):
        assert a[key] == b[key], key
    assert a["memory"]["mode"] == "in-memory" and b["memory"]["mode"] == "block-by-block"
    for report in (a, b):
        measured = report["memory"]["measured"]
        assert measured["host_peak_rss"] >= measured["host_rss_at_start"] > 0
        assert report["memory"]["plan"]["host_peak"] > report["memory"]["plan"]["baseline"]
    assert b["memory"]["block_reads"] > 0
    weights = [load_file(tmp_path / mode / "model.safetensors") for mode in reports]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    saved = json.loads((tmp_path / "block-by-block" / "report.json").read_text())
    assert saved["memory"]["plan"]["mode"] == "block-by-block"
    # the pruned (compact) directory runs block by block too, with the numbers of its in-memory load
    dense, offloaded = _pair(tmp_path / "block-by-block")
    assert offloaded.removed_attention == a["removed_attention"]
    assert perplexity(offloaded, _windows(), batch_size=2) == perplexity(dense, _windows(), batch_size=2)


def test_auto_takes_block_by_block_when_the_model_does_not_fit(workdir, tmp_path, monkeypatch):
    from twossp_core.runtime import modes

    monkeypatch.setattr(modes, "current_rss", lambda: 3 * 10**8)  # a fixed baseline: the tiny model is below RSS noise
    roomy = modes.job_plan(_spec(workdir))
    tight = modes.job_plan(_spec(workdir, execution="block-by-block"))
    assert roomy.mode == "in-memory" and tight.host_peak < roomy.host_peak
    budget = (roomy.host_peak + tight.host_peak) // 2  # below the in-memory peak, above the block-by-block one
    report = run_prune(_spec(workdir, max_host_memory=budget), tmp_path / "auto")
    assert report["memory"]["mode"] == "block-by-block"
    assert report["memory"]["budgets"]["max_host_memory"] == budget


def test_too_small_budget_is_refused_before_loading(workdir, tmp_path, capsys):
    with pytest.raises(InvalidSpec, match="does not fit the memory budget"):
        run_prune(_spec(workdir, max_host_memory="1MB"), tmp_path / "never")
    assert not (tmp_path / "never").exists()
    code = main(["prune", "--model", str(workdir / "model"), "--sparsity", "0.4", "--calibration",
                 str(workdir / "text.txt"), "--eval", str(workdir / "text.txt"), "--seq-len", "32",
                 "--max-host-memory", "10MB", "--no-progress", "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("twossp: error: the model does not fit the memory budget (host 10.00 MB)")


@pytest.mark.parametrize(("fields", "needle"), [
    ({"method": "slicegpt"}, "cannot run block by block"),
    ({"heal": {}}, "heal trains the whole model"),
    ({"method": "2ssp-refit", "options": {"refit_inputs": "dense"}}, "refit_inputs=dense cannot run block by block"),
])
def test_block_mode_refuses_what_it_cannot_do(workdir, tmp_path, fields, needle):
    with pytest.raises(InvalidSpec, match=needle):
        run_prune(_spec(workdir, execution="block-by-block", **fields), tmp_path / "never")


@pytest.mark.parametrize(("text", "expected"), [
    ("800MB", 800 * 10**6), ("0.8GB", 8 * 10**8), ("2GiB", 2 * 2**30), ("1024", 1024), (4096, 4096), ("1.5 kb", 1500),
])
def test_sizes(workdir, text, expected):
    assert _spec(workdir, max_device_memory=text).max_device_memory == expected


@pytest.mark.parametrize("text", ["lots", "-5MB", "0", "12XB", True, float("inf"), "2000000TB"])
def test_bad_sizes_are_refused(workdir, text):
    with pytest.raises(InvalidSpec, match="max_host_memory"):
        _spec(workdir, max_host_memory=text)


@pytest.mark.parametrize("method", ["shortgpt", "window"])
def test_depth_methods_read_each_block_once_per_pass(models, method):
    """ShortGPT's and the sliding window's block states come from block-by-block passes: each block is read once
    per pass over the windows (not once per window), with the in-memory model's decisions and scores."""
    dense, offloaded = _pair(models["llama"])
    offloader = offloader_of(offloaded.model)
    windows = _windows(6)
    outcomes = []
    for adapter in (dense, offloaded):
        before = offloader.block_reads
        ctx = PruneContext(adapter=adapter, calibration=windows)
        outcomes.append(method_class(method)(method_config(method, {})).prune(ctx, 0.4))
    assert offloader.block_reads - before == 4  # the 4 blocks once each (reads for removal need none)
    assert _outcome_key(outcomes[0]) == _outcome_key(outcomes[1]) and outcomes[0].details == outcomes[1].details


def test_2ssp_refit_plans_its_dense_copies_and_boundary_states(workdir):
    from twossp_core.plan.memory import spec_plan
    from twossp_core.plan.shape import model_shape

    cfg = json.loads((workdir / "model" / "config.json").read_text())
    shape = model_shape(cfg)
    spec = _spec(workdir)
    states = spec.calibration_windows * spec.seq_len * (3 * shape.hidden + shape.intermediate) * 4
    states += shape.intermediate * (4 * shape.intermediate + 4 * shape.hidden) * 8  # one block's statistics
    # in memory: the weights, the copies of the dense blocks and the states at once (after the load's own peak)
    refit = spec_plan(_spec(workdir, execution="in-memory", method="2ssp-refit"), cfg, device="cpu")
    assert refit.host_peak >= refit.baseline + refit.weights + shape.blocks * refit.block + states
    # block by block: one more block (the dense one read from the checkpoint) and the states
    plain = spec_plan(_spec(workdir, execution="block-by-block"), cfg, device="cpu")
    refit = spec_plan(_spec(workdir, execution="block-by-block", method="2ssp-refit"), cfg, device="cpu")
    assert refit.host_peak - plain.host_peak >= refit.block + states
    dense = spec_plan(_spec(workdir, method="2ssp-refit", options={"refit_inputs": "dense"}), cfg, device="cpu")
    accumulators = shape.blocks * shape.intermediate * (shape.intermediate + shape.hidden) * 8
    assert dense.host_peak - spec_plan(_spec(workdir), cfg, device="cpu").host_peak >= accumulators
