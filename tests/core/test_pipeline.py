"""The pipeline end to end on tiny local models: half precision, determinism, progress and cancellation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import FAMILIES, save_tiny, tiny_workdir

from twossp_core.errors import Cancelled
from twossp_core.export.load import load_pruned
from twossp_core.export.save import save_pruned
from twossp_core.pipeline import prepare, prune_model, run_prune
from twossp_core.plan.methods import method_names
from twossp_core.plan.spec import parse_spec
from twossp_core.plan.stages import prune_stages
from twossp_core.progress import Reporter


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tiny_workdir(tmp_path_factory.mktemp("pipeline"))


def _spec(workdir: Path, **kw):
    data = {
        "model": str(workdir / "model"), "sparsity": 0.4, "calibration": [str(workdir / "text.txt")],
        "eval": [str(workdir / "text.txt")], "seq_len": 32, "calibration_windows": 8, "eval_windows": 4,
        "measure_throughput": False, **kw,
    }
    return parse_spec(data)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return tiny_workdir(tmp_path_factory.mktemp("families"), family=None)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_prune_save_reload(family_dirs, tmp_path, dtype, family):
    if not (family_dirs / family).exists():
        save_tiny(family, family_dirs / family)
    spec = parse_spec({
        "model": str(family_dirs / family), "sparsity": 0.4, "calibration": [str(family_dirs / "text.txt")],
        "eval": [str(family_dirs / "text.txt")], "seq_len": 32, "calibration_windows": 8, "eval_windows": 2,
        "measure_throughput": False, "dtype": dtype,
    })
    ws = prepare(spec, Reporter())
    model, outcome, _ = prune_model(ws, "2ssp", spec.sparsity, spec.options, Reporter(), copy_model=False)
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    save_pruned(model, ws.tokenizer, tmp_path, {"method": "2ssp"})
    reloaded, _ = load_pruned(tmp_path, dtype=dtype)
    batch = ws.calibration[:2]
    with torch.no_grad():
        assert torch.equal(reloaded(batch).logits, model(batch).logits)
    assert outcome.removed_attention


def test_same_seed_same_result(workdir, tmp_path):
    a = run_prune(_spec(workdir), tmp_path / "a")
    b = run_prune(_spec(workdir), tmp_path / "b")
    for key in ("removed_attention", "kept_ffn_neurons", "params", "perplexity", "sparsity_achieved"):
        assert a[key] == b[key]
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((tmp_path / "a" / "report.json").read_text())["perplexity"] == a["perplexity"]


FAST_OPTIONS = {
    "evopress": {"generations": 2, "offspring": 2, "initial_candidates": 2, "initial_tokens": 16,
                 "selection_tokens": [16, 32], "selection_survivors": [2, 1]},
}


@pytest.mark.parametrize("method", [*method_names(), "2ssp+heal"])
def test_progress_covers_every_stage_in_order(workdir, tmp_path, method):
    """The stages a run reports are exactly the plan the registry declares for its method, in order."""
    seen: list[tuple[str, float]] = []
    method, _, heal = method.partition("+")
    extra = {"heal": {"steps": 2, "batch_size": 2, "seq_len": 16}} if heal else {}
    spec = _spec(workdir, method=method, sparsity=0.25, options=FAST_OPTIONS.get(method, {}), **extra)
    run_prune(spec, tmp_path / "o", progress=lambda stage, f: seen.append((stage, f)))
    entered = [stage for i, (stage, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != stage]
    assert entered == [s.name for s in prune_stages(spec)]
    runs: list[list[float]] = []  # the fractions of each stage entry
    for i, (stage, fraction) in enumerate(seen):
        if i == 0 or seen[i - 1][0] != stage:
            runs.append([])
        runs[-1].append(fraction)
    for fractions in runs:
        assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_cancel_stops_at_a_safe_point_and_writes_nothing(workdir, tmp_path):
    calls = {"n": 0}

    def should_cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    out = tmp_path / "o"
    with pytest.raises(Cancelled):
        run_prune(_spec(workdir), out, should_cancel=should_cancel)
    assert not (out / "report.json").exists() and not (out / "model.safetensors").exists()


@pytest.mark.parametrize("stage", ["evaluate_dense", "evaluate_pruned"])
def test_a_cancel_during_evaluation_stops_at_the_next_batch(workdir, tmp_path, stage):
    """Evaluation is most of a job's time: a cancel there stops before the next batch."""
    events: list[tuple[str, float]] = []
    asked = {"at": None}

    def progress(name: str, fraction: float) -> None:
        events.append((name, fraction))
        if name == stage and 0 < fraction < 1 and asked["at"] is None:
            asked["at"] = len(events)

    spec = _spec(workdir, eval_windows=16)  # 4 batches of 4 windows
    with pytest.raises(Cancelled):
        run_prune(spec, tmp_path / "o", progress=progress, should_cancel=lambda: asked["at"] is not None)
    assert asked["at"] is not None and events[asked["at"]:] == []  # no batch ran after the request


def test_a_cancel_stops_the_throughput_passes():
    from tiny_models import tiny_model

    from twossp_core.evaluation.throughput import forward_throughput
    from twossp_core.models.registry import adapter_for

    adapter = adapter_for(tiny_model("llama"))
    passes: list[int] = []
    adapter.layers[0].register_forward_pre_hook(lambda *_: passes.append(1))

    def checkpoint() -> None:
        if len(passes) == 3:
            raise Cancelled("cancelled by request")

    with pytest.raises(Cancelled):
        forward_throughput(adapter, torch.zeros((1, 16), dtype=torch.long), checkpoint=checkpoint)
    assert len(passes) == 3


def test_throughput_is_the_median_of_several_passes_of_each_model_in_turn():
    from tiny_models import tiny_model

    from twossp_core.evaluation.throughput import MIN_RUNS, WARMUP_RUNS, measure_throughput
    from twossp_core.models.registry import adapter_for

    dense, small = adapter_for(tiny_model("llama")), adapter_for(tiny_model("llama"))
    small.remove_attention(0)
    calls: list[str] = []
    for name, adapter in (("dense", dense), ("pruned", small)):
        adapter.layers[1].register_forward_pre_hook(lambda *_, name=name: calls.append(name))
    result = measure_throughput({"dense": dense, "pruned": small}, torch.zeros((1, 32), dtype=torch.long),
                                min_seconds=0.0)
    for tp in result.values():
        assert tp.runs == MIN_RUNS and tp.low <= tp.median <= tp.high
    timed = calls[2 * WARMUP_RUNS:]  # after the warm-up passes the models alternate
    assert timed == ["dense", "pruned"] * MIN_RUNS


@pytest.mark.slow
def test_the_report_gives_the_throughput_median_and_spread(workdir, tmp_path):
    report = run_prune(_spec(workdir, measure_throughput=True), tmp_path / "o")
    spread = report["throughput_spread"]
    for key in ("dense", "pruned"):
        assert spread[key]["runs"] >= 5
        median = report["throughput_tokens_per_s"][key]
        assert spread[key]["min"] <= median == spread[key]["median"] <= spread[key]["max"]
