"""Multi-device execution: the model loaded through accelerate's device map and dispatch hooks takes the same
decisions and measures the same perplexities as the in-memory model. Here every entry of the map is the CPU (the
hooks still move every module's inputs); with two CUDA devices the last tests spread the blocks over both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_workdir

from twossp_core.errors import InvalidSpec
from twossp_core.evaluation.perplexity import perplexity
from twossp_core.models.registry import adapter_for
from twossp_core.pipeline import run_prune
from twossp_core.plan.memory import Workload, plan_memory
from twossp_core.plan.methods import method_config
from twossp_core.plan.spec import parse_spec
from twossp_core.pruning.base import PruneContext
from twossp_core.pruning.registry import method_class
from twossp_core.runtime.devices import resolve_dtype
from twossp_core.runtime.dispatch import device_map, is_dispatched, load_multi_device
from twossp_core.runtime.loading import empty_model, load_config, load_model
from twossp_core.runtime.modes import model_config_dict

EVOPRESS = {"generations": 2, "offspring": 4, "initial_candidates": 4, "initial_tokens": 16,
            "selection_tokens": [16, 32], "selection_survivors": [2, 1]}
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tiny_workdir(tmp_path_factory.mktemp("multi-job"))


def _placement(path: Path, devices: list[tuple[str, int]] | None = None, device: str = "cpu"):
    plan = plan_memory(model_config_dict(str(path)), Workload(seq_len=16, device=device), "multi-device",
                       devices=devices)
    assert plan.placement is not None and plan.placement.fits
    return plan.placement


def _windows(n: int = 4, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, 90, (n, seq), generator=torch.Generator().manual_seed(0))


def _outcome_key(outcome):
    return outcome.removed_attention, outcome.removed_mlp, outcome.removed_blocks, outcome.kept_ffn_neurons


def _hooked(adapter) -> bool:
    return all(hasattr(layer, "_hf_hook") for layer in adapter.layers)


def test_device_map_follows_the_placement_and_covers_every_tensor(models):
    """Over two GPUs (the map is built on the meta device: no GPU needed): blocks in order, the embeddings and the
    modules the decoder computes its masks and positions with on the first, the final norm and LM head on the
    last; every parameter and buffer belongs to a mapped module."""
    for family, path in models.items():
        placement = _placement(path, [("cuda:0", 10**12), ("cuda:1", 10**12)], device="cuda")
        model = empty_model(str(path), load_config(str(path)), resolve_dtype("float32"))
        mapping = device_map(model, placement)
        layers = [mapping[f"model.layers.{i}"] for i in range(4)]
        assert layers == [0, 0, 1, 1], family
        assert mapping["model.embed_tokens"] == 0 and mapping["lm_head"] == (0 if family == "gemma2" else 1)
        assert mapping["model.rotary_emb"] == 0
        names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
        assert all(any(n == k or n.startswith(k + ".") for k in mapping) for n in names), family


@pytest.mark.parametrize(("family", "method"), [
    ("llama", "2ssp"), ("gemma2", "2ssp"), ("phi", "2ssp"), ("llama", "shortgpt"), ("llama", "window"),
    ("llama", "blockpruner"), ("llama", "evopress"),
])
def test_same_decisions_and_perplexities_as_in_memory(models, family, method):
    dense = adapter_for(load_model(str(models[family]))[0])
    spread = adapter_for(load_multi_device(str(models[family]), dtype="float32",
                                           placement=_placement(models[family]))[0])
    assert is_dispatched(spread.model) and _hooked(spread) and not _hooked(dense)
    windows = _windows()
    assert perplexity(spread, windows, batch_size=4) == perplexity(dense, windows, batch_size=4)
    options = {"round_to": 1, "stage2_windows": 2} if method == "2ssp" else {}
    if method == "evopress":
        options = EVOPRESS
    outcomes = [method_class(method)(method_config(method, options)).prune(PruneContext(adapter=a, calibration=windows),
                                                                           0.4) for a in (dense, spread)]
    assert _outcome_key(outcomes[0]) == _outcome_key(outcomes[1])
    assert outcomes[0].details == outcomes[1].details  # removal perplexities, scores: bit-identical
    assert perplexity(spread, windows, batch_size=4) == perplexity(dense, windows, batch_size=4)


def _spec(workdir: Path, **kw):
    return parse_spec({
        "model": str(workdir / "model"), "sparsity": 0.4, "calibration": [str(workdir / "text.txt")],
        "eval": [str(workdir / "text.txt")], "seq_len": 32, "calibration_windows": 6, "eval_windows": 5,
        "measure_throughput": False, **kw,
    })


@pytest.mark.parametrize("method", ["2ssp", "shortgpt"])
def test_job_in_both_modes_reports_the_placement_and_writes_the_same_model(workdir, tmp_path, method):
    reports = {}
    for mode in ("in-memory", "multi-device"):
        reports[mode] = run_prune(_spec(workdir, method=method, execution=mode, device="cpu"), tmp_path / mode)
    a, b = reports["in-memory"], reports["multi-device"]
    for key in ("removed_attention", "removed_mlp", "removed_blocks", "kept_ffn_neurons", "perplexity",
                "method_details", "params"):
        assert a[key] == b[key], key
    assert a["memory"]["mode"] == "in-memory" and a["memory"]["plan"]["placement"] is None
    placement = b["memory"]["plan"]["placement"]
    assert b["memory"]["mode"] == "multi-device" and placement["fits"]
    assert list(placement["devices"][0]["parts"]) == ["embeddings", "blocks 0-3", "final norm", "LM head"]
    weights = [load_file(tmp_path / mode / "model.safetensors") for mode in reports]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # the pruned (compact) directory loads spread too, with the numbers of its in-memory load
    pruned = tmp_path / "multi-device"
    dense = adapter_for(load_model(str(pruned))[0])
    spread = adapter_for(load_multi_device(str(pruned), dtype="float32", placement=_placement(pruned))[0])
    assert _hooked(spread) and spread.num_blocks == dense.num_blocks
    assert spread.removed_attention == dense.removed_attention == a["removed_attention"]
    assert perplexity(spread, _windows(), batch_size=2) == perplexity(dense, _windows(), batch_size=2)


@pytest.mark.parametrize(("fields", "needle"), [
    ({"method": "slicegpt"}, "cannot run in multi-device mode"),
    ({"method": "2ssp-refit"}, "cannot run in multi-device mode"),
    ({"heal": {"steps": 1, "batch_size": 1, "seq_len": 16}}, "heal"),
])
def test_multi_device_mode_refuses_what_it_cannot_do(workdir, tmp_path, fields, needle):
    with pytest.raises(InvalidSpec, match=needle):
        run_prune(_spec(workdir, execution="multi-device", **fields), tmp_path / "never")
    assert not (tmp_path / "never").exists()


@TWO_GPUS
@pytest.mark.parametrize("method", ["2ssp", "shortgpt", "evopress"])
def test_two_gpus_take_the_decisions_of_one(models, method):
    """Blocks 0-1 on cuda:0, blocks 2-3 with the final norm and LM head on cuda:1: the hidden states cross at the
    block boundary. Same kernels as the model on cuda:0 alone, so the same decisions (scores within rounding)."""
    path = models["llama"]
    placement = _placement(path, [("cuda:0", 10**12), ("cuda:1", 10**12)], device="cuda")
    spread = adapter_for(load_multi_device(str(path), dtype="float32", placement=placement)[0])
    one = adapter_for(load_model(str(path), device="cuda:0")[0])
    assert [str(next(layer.parameters()).device) for layer in spread.layers] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    assert spread.model.lm_head.weight.device.index == 1
    windows = _windows().to("cuda:0")
    assert perplexity(spread, windows, batch_size=4) == pytest.approx(perplexity(one, windows, batch_size=4),
                                                                      rel=1e-5)
    options = {"round_to": 1, "stage2_windows": 2} if method == "2ssp" else {}
    if method == "evopress":
        options = EVOPRESS
    outcomes = [method_class(method)(method_config(method, options)).prune(PruneContext(adapter=a, calibration=windows),
                                                                           0.4) for a in (one, spread)]
    assert _outcome_key(outcomes[0]) == _outcome_key(outcomes[1])
    assert perplexity(spread, windows, batch_size=4) == pytest.approx(perplexity(one, windows, batch_size=4),
                                                                      rel=1e-5)


@TWO_GPUS
def test_job_on_two_gpus_reports_each_devices_peak(workdir, tmp_path):
    report = run_prune(_spec(workdir, execution="multi-device", device="cuda"), tmp_path / "job")
    memory = report["memory"]
    assert memory["mode"] == "multi-device"
    shares = [d for d in memory["plan"]["placement"]["devices"] if d["parts"]]
    assert len(shares) >= 2 and shares[0]["parts"][0] == "embeddings" and shares[-1]["parts"][-1] == "LM head"
    peaks = memory["measured"]["device_peaks_allocated"]
    assert all(peaks[d["device"]] > 0 for d in shares)
