"""Healing on the real stories260k model: it lowers held-out perplexity, keeps the pruned structure, is
deterministic for a seed, stops within a step when cancelled, and its exports reproduce the healed perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from twossp_core.cli.main import main
from twossp_core.errors import Cancelled
from twossp_core.evaluation.perplexity import perplexity
from twossp_core.export.load import load_pruned
from twossp_core.models.registry import adapter_for
from twossp_core.pipeline import heal_pruned, measure_pruned, prepare, prune_model, run_prune
from twossp_core.plan.spec import parse_spec, parse_sweep_spec
from twossp_core.progress import Reporter
from twossp_core.sweep import run_sweep

FEW_STEPS = {"steps": 12, "batch_size": 4, "seq_len": 128, "lr": 3e-3}


def _spec(model: Path, text: Path, heal: dict | None, **kw):
    return parse_spec({
        "model": str(model), "sparsity": 0.5, "calibration": [f"{text}:0:500"], "eval": [f"{text}:500:1000"],
        "doc_separator": "<|endoftext|>", "seq_len": 256, "calibration_windows": 8, "eval_windows": 24,
        "measure_throughput": False, "heal": heal, **kw,
    })


def _quick_spec(model: Path, text: Path, heal: dict):
    """For tests about weights, not perplexity: two evaluation windows."""
    return _spec(model, text, heal, eval_windows=2)


def _shapes(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def healed_job(stories_model, stories_text, tmp_path_factory):
    """One compact healed job (full fine-tuning), shared by the tests that read its outputs."""
    out = tmp_path_factory.mktemp("healed") / "out"
    report = run_prune(_spec(stories_model, stories_text, {**FEW_STEPS, "steps": 40}), out)
    return out, report


@pytest.mark.slow
def test_heal_lowers_held_out_perplexity_and_reports_it(healed_job):
    out, report = healed_job
    (entry,) = report["perplexity"]
    assert entry["healed"] < 0.7 * entry["pruned"], entry  # 40 small steps already remove a third of the loss
    heal = report["heal"]
    assert heal["method"] == "kd" and heal["params"] == "full" and heal["steps"] == 40
    assert heal["tokens"] == 40 * 4 * 128 and heal["seq_len"] == 128 and heal["lr"] == 3e-3
    assert heal["loss"] < heal["first_loss"] and heal["seconds"] > 0
    curve = heal["loss_curve"]
    assert curve[0][0] == 1 and curve[-1][0] == 40 and all(math.isfinite(v) for _, v in curve)
    assert (out / heal["plot"]).stat().st_size > 1000
    saved = json.loads((out / "report.json").read_text())
    assert saved["perplexity"] == report["perplexity"] and saved["heal"]["loss_curve"] == curve
    assert report["export"]["stored_params"] == report["params"]["total_after"]
    assert json.loads((out / "config.json").read_text())["twossp"]["heal"]["steps"] == 40


@pytest.mark.slow
def test_heal_keeps_structure_and_parameter_counts(stories_model, stories_text):
    spec = _quick_spec(stories_model, stories_text, FEW_STEPS)
    ws = prepare(spec, Reporter())
    model, outcome, prune_s = prune_model(ws, "2ssp", 0.5, spec.options, Reporter(), copy_model=True)
    report = measure_pruned(ws, model, "2ssp", 0.5, spec.options, outcome, prune_s, Reporter())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counts = (adapter_for(model).blocks_params(), adapter_for(model).total_params())
    healed, losses = heal_pruned(ws, model, report, Reporter())
    assert len(losses) == FEW_STEPS["steps"]
    after = healed.state_dict()
    assert _shapes(healed) == {k: tuple(v.shape) for k, v in before.items()}
    assert (adapter_for(healed).blocks_params(), adapter_for(healed).total_params()) == counts
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the weights did move
    # the teacher (the workspace's dense model in this copy-pruning setup) is untouched and not trainable-tracked
    assert all(p.grad is None for p in ws.model.parameters())


@pytest.mark.slow
def test_heal_is_deterministic_for_a_seed(stories_model, stories_text):
    spec = _quick_spec(stories_model, stories_text, {**FEW_STEPS, "steps": 4})
    ws = prepare(spec, Reporter())

    def healed_weights(seed: int) -> dict[str, torch.Tensor]:
        ws.spec.heal.seed = seed
        model, outcome, prune_s = prune_model(ws, "2ssp", 0.5, spec.options, Reporter(), copy_model=True)
        report = measure_pruned(ws, model, "2ssp", 0.5, spec.options, outcome, prune_s, Reporter())
        healed, _ = heal_pruned(ws, model, report, Reporter())
        return healed.state_dict()

    a, b, c = healed_weights(1), healed_weights(1), healed_weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.slow
def test_cancelled_heal_stops_within_a_step(stories_model, stories_text, tmp_path):
    steps_seen: list[str] = []
    cancel_after = 3

    def progress(stage: str, fraction: float, detail: str | None = None) -> None:
        if stage == "heal":
            steps_seen.append(detail or "")

    def should_cancel() -> bool:
        return len(steps_seen) >= cancel_after

    out = tmp_path / "o"
    with pytest.raises(Cancelled):
        run_prune(_quick_spec(stories_model, stories_text, {**FEW_STEPS, "steps": 50}), out, progress=progress,
                  should_cancel=should_cancel)
    assert len(steps_seen) == cancel_after  # the step after the request never ran
    assert steps_seen[-1].startswith(f"step {cancel_after}/50 loss ")
    assert not (out / "report.json").exists() and not (out / "model.safetensors").exists()


@torch.no_grad()
def _plain_perplexity(model, windows: torch.Tensor) -> float:
    """Perplexity from a model's own forward (for models loaded by plain transformers)."""
    total, count = 0.0, 0
    for batch in windows.split(4):
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
        total, count = total + nll.double().sum().item(), count + nll.numel()
    return math.exp(total / count)


def _eval_windows(stories_text, tokenizer):
    from twossp_core.data.windows import load_windows
    from twossp_core.plan.sources import DataSource

    return load_windows(DataSource.parse(f"{stories_text}:500:1000"), tokenizer, seq_len=256, role="eval",
                        doc_separator="<|endoftext|>", max_windows=24)


@pytest.mark.slow
def test_compact_healed_export_reloads_with_the_healed_perplexity(healed_job, stories_text):
    from transformers import AutoModelForCausalLM

    out, report = healed_job
    healed = report["perplexity"][0]["healed"]
    model, tokenizer = load_pruned(out)
    windows = _eval_windows(stories_text, tokenizer)
    assert perplexity(adapter_for(model), windows, batch_size=4) == pytest.approx(healed, rel=1e-5)
    plain = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert _plain_perplexity(plain, windows) == pytest.approx(healed, rel=1e-4)


@pytest.mark.slow
def test_portable_lora_heal_reloads_without_remote_code_and_holds_no_adapter(stories_model, stories_text, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "o"
    heal = {**FEW_STEPS, "params": "lora", "lora_rank": 8, "lr": 1e-2}
    report = run_prune(_spec(stories_model, stories_text, heal, export="portable"), out)
    (entry,) = report["perplexity"]
    assert entry["healed"] < entry["pruned"]
    assert report["heal"]["params"] == "lora"
    weights = load_file(out / "model.safetensors")
    assert not [k for k in weights if "lora" in k.lower() or "base_layer" in k]
    assert not (out / "adapter_config.json").exists() and not (out / "modeling_twossp.py").exists()
    plain = AutoModelForCausalLM.from_pretrained(out)
    _, tokenizer = load_pruned(out)
    windows = _eval_windows(stories_text, tokenizer)
    assert _plain_perplexity(plain, windows) == pytest.approx(entry["healed"], rel=1e-4)


@pytest.mark.slow
def test_sweep_heals_every_method(stories_model, stories_text, tmp_path):
    spec = parse_sweep_spec({
        "model": str(stories_model), "methods": "2ssp,shortgpt", "sparsities": [0.4],
        "calibration": [f"{stories_text}:0:500"], "eval": [f"{stories_text}:500:1000"],
        "doc_separator": "<|endoftext|>", "seq_len": 256, "calibration_windows": 8, "eval_windows": 8,
        "measure_throughput": False, "heal": {**FEW_STEPS, "steps": 6},
    })
    result = run_sweep(spec, tmp_path / "s")
    assert [r["method"] for r in result["rows"]] == ["2ssp", "shortgpt"]
    for row in result["rows"]:
        (entry,) = row["perplexity"]
        assert entry["healed"] < entry["pruned"], row
        name = f"{row['method']}-0.4"
        assert (tmp_path / "s" / "runs" / name / "heal_loss.png").exists()
        assert json.loads((tmp_path / "s" / "runs" / name / "report.json").read_text())["heal"]["steps"] == 6
    assert "healed" in (tmp_path / "s" / "comparison.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--heal-option", "steps=5"], "--heal-option needs --heal"),
    (["--heal", "kd", "--heal-option", "stepz=5"], "--heal-option stepz"),  # the CLI names its own flags
    (["--heal", "kd", "--heal-option", "lr=-1"], "--heal-option lr"),
    (["--heal", "lm", "--heal-option", "loss=kd"], "--heal kd|lm"),
    (["--heal", "kd", "--heal-option", "data=/nonexistent.txt"], "/nonexistent.txt"),
])
def test_bad_heal_requests_exit_2_before_loading(stories_model, tmp_path, capsys, argv, message):
    code = main(["prune", "--model", str(stories_model), "--sparsity", "0.5", "--out", str(tmp_path / "o"),
                 "--calibration", "c4", "--eval", "wikitext2", *argv])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("twossp: error:") and message in err
    assert not (tmp_path / "o").exists()
