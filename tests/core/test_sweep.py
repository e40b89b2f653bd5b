"""Sweeps: the request schema, one CLI job over methods x sparsities, its comparison files, shared statistics,
progress and cancellation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_workdir

from twossp_core.cli.main import main
from twossp_core.errors import Cancelled, InvalidSpec
from twossp_core.pipeline import run_prune
from twossp_core.plan.methods import method_names
from twossp_core.plan.spec import JobSpecBase, PruneSpec, SweepSpec, parse_sweep_spec
from twossp_core.plan.stages import sweep_stages
from twossp_core.sweep import run_sweep

EVO = {"generations": 2, "offspring": 3, "initial_candidates": 4, "selection_tokens": [1, 64],
       "selection_survivors": [2, 1]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tiny_workdir(tmp_path_factory.mktemp("sweep"))


def _data(workdir: Path, **kw):
    return {
        "model": str(workdir / "model"), "calibration": [str(workdir / "text.txt")],
        "eval": [str(workdir / "text.txt")],
        "seq_len": 32, "calibration_windows": 4, "eval_windows": 2, "measure_throughput": False, **kw,
    }


def test_sweep_spec_shares_the_job_fields_of_prune_spec():
    shared = set(JobSpecBase.model_fields)
    assert shared <= set(PruneSpec.model_fields) and shared <= set(SweepSpec.model_fields)
    spec = parse_sweep_spec({"model": "m", "sparsities": "0.5,0.25", "methods": "all", "seq_len": 64,
                             "options": {"evopress": {"generations": 2}}})
    assert spec.methods == method_names() and spec.sparsities == [0.25, 0.5]
    one = spec.prune_spec("evopress", 0.5)
    assert isinstance(one, PruneSpec) and one.seq_len == 64 and one.options.generations == 2


def test_a_spec_names_the_methods_and_sparsities_it_prunes_with():
    sweep = parse_sweep_spec({"model": "m", "sparsities": "0.5,0.25", "methods": "2ssp,slicegpt",
                              "options": {"slicegpt": {"round_to": 8}}})
    pruning = sweep.pruning()
    assert pruning.methods == ["2ssp", "slicegpt"] and pruning.sparsities == [0.25, 0.5]
    assert pruning.options == sweep.options
    one = sweep.prune_spec("slicegpt", 0.5).pruning()
    assert one.methods == ["slicegpt"] and one.sparsities == [0.5]
    assert one.options["slicegpt"] == sweep.options["slicegpt"] and one.options["slicegpt"].round_to == 8
    evaluation = JobSpecBase(model="m").pruning()
    assert evaluation.methods == [] and evaluation.sparsities == []


@pytest.mark.parametrize("bad", [
    {"sparsities": [0.0]}, {"sparsities": [1.2]}, {"methods": ["nope"]},
    {"methods": ["2ssp"], "options": {"window": {}}},
    {"options": {"evopress": {"generations": -1}}}, {"sparsities": []},
])
def test_bad_sweeps_are_refused(bad):
    with pytest.raises(InvalidSpec):
        parse_sweep_spec({"model": "m", "sparsities": [0.5], **bad})


@pytest.mark.slow
def test_cli_sweep_writes_the_comparison(workdir, tmp_path):
    out = tmp_path / "cmp"
    args = ["sweep", "--model", str(workdir / "model"), "--methods", "2ssp,shortgpt,slicegpt,evopress",
            "--sparsities", "0.25,0.5", "--calibration", str(workdir / "text.txt"), "--eval", str(workdir / "text.txt"),
            "--seq-len", "32", "--calibration-windows", "4", "--eval-windows", "2", "--no-progress", "--out", str(out)]
    for key, value in EVO.items():
        args += ["--option", f"evopress.{key}={json.dumps(value)}"]
    assert main(args) == 0
    rows = json.loads((out / "comparison.json").read_text())
    assert [(r["method"], r["sparsity_target"]) for r in rows] == [
        (m, s) for m in ("2ssp", "shortgpt", "slicegpt", "evopress") for s in (0.25, 0.5)
    ]
    for r in rows:
        assert r["error"] is None and 0 < r["sparsity_achieved"] < 1 and r["prune_s"] >= 0
        assert r["perplexity"][0]["pruned"] > 0 and r["perplexity"][0]["dense"] > 0
        assert (out / "runs" / f"{r['method']}-{r['sparsity_target']:g}" / "report.json").is_file()
    assert rows[-1]["params"]["blocks_after"] < rows[-1]["params"]["blocks_before"]
    assert "slicegpt" in rows[4]["method"] and "hidden dimension" in rows[4]["note"]
    md = (out / "comparison.md").read_text()
    assert all(m in md for m in ("2ssp", "shortgpt", "slicegpt", "evopress")) and "| method |" in md
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "comparison.svg").read_text().lstrip().startswith("<?xml")
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["spec"]["sparsities"] == [0.25, 0.5]


@pytest.mark.slow
def test_statistics_computed_once_per_sweep(workdir, tmp_path, monkeypatch):
    import twossp_core.pruning.hidden_states as hs

    calls = []
    original = hs.last_token_states
    monkeypatch.setattr(hs, "last_token_states", lambda *a, **k: calls.append(1) or original(*a, **k))
    spec = parse_sweep_spec(_data(workdir, methods=["shortgpt", "window"], sparsities=[0.25, 0.5]))
    result = run_sweep(spec, tmp_path / "o")
    assert len(result["rows"]) == 4 and len(calls) == 1


@pytest.mark.slow
@pytest.mark.parametrize("export", ["compact", "portable"])
def test_saved_models_load_again_in_either_format(workdir, tmp_path, export):
    from transformers import AutoModelForCausalLM

    spec = parse_sweep_spec(_data(workdir, methods=["2ssp", "shortgpt"], sparsities=[0.5], save_models=True,
                                  export=export))
    run_sweep(spec, tmp_path / "o")
    for name in ("2ssp-0.5", "shortgpt-0.5"):
        model_dir = tmp_path / "o" / "models" / name
        report = json.loads((tmp_path / "o" / "runs" / name / "report.json").read_text())
        config = json.loads((model_dir / "config.json").read_text())
        assert config["twossp"]["export"] == report["export"]["format"] == export
        # 2SSP removes attention: only the compact form needs the remote code; ShortGPT's is plain either way
        needs_code = export == "compact" and name.startswith("2ssp")
        assert (model_dir / "modeling_twossp.py").exists() == needs_code
        model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=needs_code)
        assert sum(p.numel() for p in model.parameters()) == report["export"]["stored_params"]
        if export == "portable" and name.startswith("2ssp"):
            assert report["export"]["stored_params"] > report["params"]["total_after"]


def test_portable_export_refuses_slicegpt():
    with pytest.raises(InvalidSpec, match="slicegpt"):
        parse_sweep_spec({"model": "m", "sparsities": [0.5], "methods": ["2ssp", "slicegpt"], "export": "portable"})


@pytest.mark.slow
def test_infeasible_cells_become_error_rows(workdir, tmp_path):
    spec = parse_sweep_spec(_data(workdir, methods=["shortgpt"], sparsities=[0.05, 0.5]))
    rows = run_sweep(spec, tmp_path / "o")["rows"]
    assert rows[0]["error"].startswith("InfeasibleTarget") and rows[1]["error"] is None
    assert "error" in (tmp_path / "o" / "comparison.md").read_text()


@pytest.mark.slow
def test_progress_names_runs_and_cancel_stops(workdir, tmp_path):
    stages: list[str] = []
    spec = parse_sweep_spec(_data(workdir, methods=["shortgpt", "window"], sparsities=[0.25]))
    run_sweep(spec, tmp_path / "a", progress=lambda s, f: stages.append(s))
    assert stages[0] == "load" and "shortgpt@0.25/evaluate_pruned" in stages and stages[-1] == "comparison"
    assert stages.index("shortgpt@0.25/evaluate_pruned") < stages.index("window@0.25/evaluate_pruned")

    seen: list[str] = []

    def should_cancel() -> bool:
        return any(s.startswith("window@") for s in seen)

    with pytest.raises(Cancelled):
        run_sweep(spec, tmp_path / "b", progress=lambda s, f: seen.append(s), should_cancel=should_cancel)
    assert not (tmp_path / "b" / "comparison.md").exists()


def test_a_sweep_plans_the_pruned_copy_besides_the_dense_model(tmp_path):
    """A sweep prunes a copy of the model for each run while the dense model stays loaded: its plan counts the
    copy, and a budget that holds one prune but not the copy is refused before anything is loaded."""
    from tiny_models import tiny_model, tokenizer_for

    from twossp_core.plan.memory import spec_plan
    from twossp_core.runtime.modes import RUNTIME_ALLOWANCE, model_config_dict
    from twossp_core.runtime.peaks import current_rss

    model = tiny_model("llama", hidden_size=512, intermediate_size=1024, num_hidden_layers=8, vocab_size=8192,
                       num_attention_heads=8, num_key_value_heads=8)
    model.save_pretrained(tmp_path / "model")
    tokenizer_for(8192).save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_text((Path(__file__).read_text() + "\n") * 20)
    weights = sum(p.numel() * 4 for p in model.parameters())
    del model
    body = {"model": str(tmp_path / "model"), "calibration": [str(tmp_path / "text.txt")],
            "eval": [str(tmp_path / "text.txt")], "seq_len": 512, "calibration_windows": 8, "eval_windows": 2,
            "measure_throughput": False, "device": "cpu", "methods": ["2ssp"], "sparsities": [0.5]}
    cfg = model_config_dict(body["model"])
    baseline = (current_rss() or 0) + RUNTIME_ALLOWANCE
    sweep = parse_sweep_spec(body)
    one = spec_plan(sweep.prune_spec("2ssp", 0.5), cfg, device="cpu", baseline=baseline)
    both = spec_plan(sweep, cfg, device="cpu", baseline=baseline)
    # the run's peak (dense model, copy, activations) outweighs loading the model (twice its weights)
    assert both.host_peak - one.host_peak > 40 * 10**6 and weights > 40 * 10**6
    budget = (one.host_peak + both.host_peak) // 2
    with pytest.raises(InvalidSpec, match="sweeps run in memory.*raise the memory budget"):
        run_sweep(parse_sweep_spec({**body, "max_host_memory": budget}), tmp_path / "o")
    assert not (tmp_path / "o" / "comparison.json").exists()


@pytest.mark.slow
def test_a_sweep_cell_is_the_prune_job_of_its_spec(workdir, tmp_path):
    """A sweep's run and a prune job of the same (method, sparsity) are one run function: the same report (timings
    aside), the same exported weights, and the sweep reports each run's export as a stage of its plan."""
    spec = parse_sweep_spec(_data(workdir, methods=["2ssp", "shortgpt"], sparsities=[0.5], save_models=True))
    seen: list[str] = []
    run_sweep(spec, tmp_path / "s", progress=lambda stage, fraction: seen.append(stage))
    entered = [stage for i, stage in enumerate(seen) if i == 0 or seen[i - 1] != stage]
    plan = [s.name for s in sweep_stages(spec)]
    assert [s for s in entered if s.endswith("/export")] == ["2ssp@0.5/export", "shortgpt@0.5/export"]
    assert [s for s in plan if s.endswith("/export")] == ["2ssp@0.5/export", "shortgpt@0.5/export"]
    for method in spec.methods:
        single = run_prune(spec.prune_spec(method, 0.5), tmp_path / method)
        cell = json.loads((tmp_path / "s" / "runs" / f"{method}-0.5" / "report.json").read_text())
        for key in set(single) - {"timings", "memory", "runtime"}:
            assert cell[key] == single[key], key
        a = load_file(tmp_path / method / "model.safetensors")
        b = load_file(tmp_path / "s" / "models" / f"{method}-0.5" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
