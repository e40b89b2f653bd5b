"""The heal's control on the real stories260k model: the dense model healed with the same settings and seed, reported
next to the healed model on every set; computed once per sweep; the same as healing the dense model separately;
pruning unchanged by it; counted in the planned steps, the progress plan and the model card."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from twossp_core.cli.main import main
from twossp_core.heal.data import load_stream
from twossp_core.heal.loop import heal
from twossp_core.models.registry import adapter_for
from twossp_core.pipeline import evaluate_perplexity, prepare, run_prune
from twossp_core.plan.spec import parse_spec, parse_sweep_spec
from twossp_core.plan.stages import prune_stages, sweep_stages
from twossp_core.progress import Reporter
from twossp_core.sweep import run_sweep

HEAL = {"steps": 6, "batch_size": 4, "seq_len": 128}


def _fields(model: Path, text: Path, heal: dict | None) -> dict:
    return {
        "model": str(model), "calibration": [f"{text}:0:500"], "eval": [f"{text}:500:700", f"{text}:700:1000"],
        "doc_separator": "<|endoftext|>", "seq_len": 256, "calibration_windows": 8, "eval_windows": 4,
        "measure_throughput": False, "heal": heal,
    }


def _entered(seen: list[str]) -> list[str]:
    """The stages in the order they were entered (a stage reports several fractions in a row)."""
    return [stage for i, stage in enumerate(seen) if i == 0 or seen[i - 1] != stage]


@pytest.mark.slow
def test_control_is_the_dense_model_healed_separately_and_leaves_the_pruning_alone(stories_model, stories_text,
                                                                                     tmp_path):
    spec = parse_spec({**_fields(stories_model, stories_text, {**HEAL, "control": True}), "sparsity": 0.5})
    seen: list[str] = []
    report = run_prune(spec, tmp_path / "with", progress=lambda stage, fraction: seen.append(stage))
    assert _entered(seen) == [s.name for s in prune_stages(spec)]
    assert [s for s in _entered(seen) if s.startswith("control/")] == [
        "control/heal_data", "control/heal", "control/evaluate_healed"]

    # the same heal, run by hand on a copy of the dense model with the job's seed
    ws = prepare(spec, Reporter())
    stream = load_stream(spec.heal_sources(), ws.tokenizer, seq_len=HEAL["seq_len"], doc_separator=spec.doc_separator,
                         max_tokens=HEAL["steps"] * HEAL["batch_size"] * HEAL["seq_len"])
    config = spec.heal.for_model(ws.dense_params["total"])
    student, result = heal(copy.deepcopy(ws.model), ws.model, stream, config, seed=spec.seed, reporter=Reporter())
    separately = evaluate_perplexity(ws, adapter_for(student), "evaluate_healed", Reporter())
    assert len(report["perplexity"]) == 2
    for entry in report["perplexity"]:
        assert entry["dense_healed"] == separately[entry["dataset"]], entry
        assert entry["dense_healed"] != entry["dense"]  # the heal moved the dense model
    assert spec.heal.lr is None and report["heal"]["lr"] == config.lr == 3e-3  # the rate chosen for a 0.26 M model
    control = report["heal"]["control"]
    assert control["steps"] == HEAL["steps"] and control["tokens"] == HEAL["steps"] * HEAL["batch_size"] * 128
    assert control["loss"] == pytest.approx(sum(result.losses[-10:]) / len(result.losses[-10:]))
    assert control["first_loss"] == result.losses[0] and control["seconds"] > 0
    assert len(control["loss_curve"]) == HEAL["steps"]
    assert report["timings"]["control_heal_s"] > 0 and report["timings"]["control_evaluate_healed_s"] > 0
    saved = json.loads((tmp_path / "with" / "report.json").read_text())
    assert saved["perplexity"] == report["perplexity"] and saved["heal"]["control"]["steps"] == HEAL["steps"]

    # the card states the healed model against the control, per set
    card = (tmp_path / "with" / "README.md").read_text()
    assert "dense healed (control)" in card and "net of its control" in card
    for entry in report["perplexity"]:
        ratio = entry["healed"] / entry["dense_healed"]
        side = "below" if ratio < 1 else "above"
        assert f"healed {entry['healed']:.3f} is {abs(ratio - 1):.1%} {side} the control's " \
               f"{entry['dense_healed']:.3f}" in card

    # without the control: the same pruning and the same healed model (the control leaves the random state alone)
    plain = run_prune(parse_spec({**_fields(stories_model, stories_text, HEAL), "sparsity": 0.5}), tmp_path / "plain")
    assert plain["heal"]["options"]["control"] is False and "control" not in plain["heal"]
    for key in ("removed_attention", "kept_ffn_neurons", "sparsity_achieved"):
        assert plain[key] == report[key]
    for a, b in zip(plain["perplexity"], report["perplexity"], strict=True):
        assert (a["pruned"], a["healed"]) == (b["pruned"], b["healed"]) and "dense_healed" not in a
    assert "without a control" in (tmp_path / "plain" / "README.md").read_text()


@pytest.mark.slow
def test_a_sweep_heals_the_dense_model_once_for_all_its_runs(stories_model, stories_text, tmp_path):
    spec = parse_sweep_spec({**_fields(stories_model, stories_text, HEAL), "methods": "2ssp,shortgpt",
                             "sparsities": [0.2, 0.4]})
    assert spec.heal.control is True  # on by default in a sweep
    seen: list[str] = []
    result = run_sweep(spec, tmp_path / "s", progress=lambda stage, fraction: seen.append(stage))
    entered, plan = _entered(seen), [s.name for s in sweep_stages(spec)]
    assert set(entered) <= set(plan)  # (a run may skip a stage: 2SSP's stage 1 scores are shared by the sweep)
    controls = ["control/heal_data", "control/heal", "control/evaluate_healed"]
    assert [s for s in plan if s.startswith("control/")] == [s for s in entered if s.startswith("control/")] == controls
    assert entered.count("control/heal") == 1 and entered.index("control/heal") < entered.index("2ssp@0.2/stage1")
    assert sum(s.endswith("/heal") for s in entered) == 1 + 4  # the control, then each run's heal

    control = {d["dataset"]: d["healed"] for d in result["dense"]["perplexity"]}
    assert len(control) == 2 and result["dense"]["control"]["steps"] == HEAL["steps"]
    assert len(result["rows"]) == 4
    for row in result["rows"]:
        for entry in row["perplexity"]:
            assert entry["dense_healed"] == control[entry["dataset"]]
        report = json.loads((tmp_path / "s" / "runs" / f"{row['method']}-{row['sparsity_target']:g}" /
                             "report.json").read_text())
        assert report["heal"]["control"]["loss"] == result["dense"]["control"]["loss"]
    assert "control_heal_s" in json.loads((tmp_path / "s" / "sweep.json").read_text())["timings"]
    md = (tmp_path / "s" / "comparison.md").read_text()
    assert "Dense model healed the same way" in md
    header = next(line for line in md.splitlines() if line.startswith("| method | target"))
    assert header.count("healed/control ") == 2
    row = next(r for r in result["rows"] if r["method"] == "2ssp" and r["sparsity_target"] == 0.4)
    first = row["perplexity"][0]
    line = next(x for x in md.splitlines() if x.startswith("| 2ssp | 40.0%"))
    assert f"| {first['healed'] / first['dense_healed']:.3f} |" in line

    # heal.control=false turns it off
    off = parse_sweep_spec({**_fields(stories_model, stories_text, {**HEAL, "control": False}), "methods": "2ssp",
                            "sparsities": [0.4]})
    assert not any(s.name.startswith("control/") for s in sweep_stages(off))


def test_the_planned_steps_count_the_control_once():
    base = {"model": "m", "calibration": ["c4"], "heal": {"steps": 10}}
    prune = parse_spec({**base, "sparsity": 0.5})
    assert prune.heal.control is False and prune.heal.planned_steps(512) == 10
    assert parse_spec({**base, "sparsity": 0.5, "heal": {"steps": 10, "control": True}}).heal.planned_steps(512) == 20
    sweep = parse_sweep_spec({**base, "methods": "2ssp,shortgpt", "sparsities": [0.25, 0.5]})
    assert sweep.heal.control is True and sweep.heal.planned_steps(512, runs=4) == 50
    assert sweep.prune_spec("2ssp", 0.5).heal.control is True  # a sweep's cell keeps the sweep's setting
    tokens = parse_spec({**base, "sparsity": 0.5, "heal": {"tokens": 5000, "batch_size": 2, "control": True}})
    assert tokens.heal.planned_steps(512) == 2 * 5  # ceil(5000 / (2 x 512)) = 5 per heal


@pytest.mark.parametrize("flag", ["--heal-control", "--no-heal-control"])
def test_heal_control_flag_needs_a_heal(stories_model, tmp_path, capsys, flag):
    code = main(["prune", "--model", str(stories_model), "--sparsity", "0.5", "--out", str(tmp_path / "o"), flag])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("twossp: error:") and f"{flag} needs --heal" in err
    assert not (tmp_path / "o").exists()


def test_heal_warnings_name_each_set_a_heal_made_worse():
    from twossp_core.pipeline import heal_warnings

    rows = [{"dataset": "a", "dense": 10.0, "pruned": 20.0, "healed": 15.0, "dense_healed": 9.5},
            {"dataset": "b", "dense": 30.0, "pruned": 40.0, "healed": 41.0, "dense_healed": 31.0}]
    healed, control = heal_warnings(rows, 3e-3)
    assert "1 of 2 evaluation sets (b 40.000 -> 41.000)" in healed and "0.003" in healed
    assert "1 of 2 evaluation sets (b 30.000 -> 31.000)" in control
    better = [{**r, "healed": r["pruned"] - 1, "dense_healed": r["dense"]} for r in rows]
    assert heal_warnings(better, 3e-3) == []  # equal to dense is not worse
    noise = [{**r, "healed": r["pruned"] * 1.009, "dense_healed": r["dense"] * 1.009} for r in rows]
    assert heal_warnings(noise, 3e-3) == []  # within 1 %: a short heal's noise, not damage
    assert heal_warnings([{k: v for k, v in r.items() if k != "dense_healed"} for r in better], 3e-3) == []


@pytest.mark.slow
def test_a_heal_that_makes_the_models_worse_is_said_in_the_report_the_card_and_the_cli(
    stories_model, stories_text, tmp_path, capsys
):
    # a learning rate far too high for any model: both heals wreck the weights they train
    out = tmp_path / "job"
    code = main(["prune", "--model", str(stories_model), "--sparsity", "0.5", "--calibration", f"{stories_text}:0:500",
                 "--eval", f"{stories_text}:500:700", "--doc-separator", "<|endoftext|>", "--seq-len", "256",
                 "--calibration-windows", "8", "--eval-windows", "4", "--no-throughput", "--no-progress",
                 "--heal", "kd", "--heal-option", "steps=4", "--heal-option", "batch_size=2",
                 "--heal-option", "seq_len=128", "--heal-option", "lr=0.1", "--heal-option", "control=true",
                 "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    (row,) = report["perplexity"]
    assert row["healed"] > row["pruned"] and row["dense_healed"] > row["dense"], row
    warnings = [w for w in report["warnings"] if "heal" in w]
    assert len(warnings) == 2 and "lower heal.lr (this heal's: 0.1)" in warnings[0], warnings
    err = capsys.readouterr().err
    assert all(f"twossp: warning: {w}" in err for w in warnings)
    card = (out / "README.md").read_text()
    assert "## Warnings" in card and all(w in card for w in warnings)
    assert json.loads((out / "config.json").read_text())["twossp"]["warnings"] == report["warnings"]


@pytest.mark.slow
def test_a_sweep_s_comparison_carries_each_run_s_warnings(stories_model, stories_text, tmp_path):
    from twossp_core.comparison import comparison_row
    from twossp_core.report_table import comparison_markdown

    spec = parse_sweep_spec({**_fields(stories_model, stories_text, {**HEAL, "lr": 0.1, "control": False}),
                             "methods": "2ssp", "sparsities": [0.4]})
    result = run_sweep(spec, tmp_path / "s")
    (row,) = result["rows"]
    report = json.loads((tmp_path / "s" / "runs" / "2ssp-0.4" / "report.json").read_text())
    heal_warnings = [w for w in report["warnings"] if w.startswith("the heal raised")]
    assert heal_warnings and row["warnings"] == report["warnings"]
    md = (tmp_path / "s" / "comparison.md").read_text()
    assert all(f"Note — 2ssp at 40.0%: warning: {w}." in md for w in report["warnings"])
    quiet = comparison_row({**report, "warnings": []})
    assert "warnings" not in quiet and "warning:" not in comparison_markdown([quiet], result["dense"])
