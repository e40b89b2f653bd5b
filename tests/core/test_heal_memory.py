"""The memory plan counts the heal phase: what each heal option holds moves the plan the way it moves the memory,
a budget that holds the pruning but not the heal is refused naming the heal, and a real healed job stays within
its plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twossp_core.errors import InvalidSpec
from twossp_core.plan.memory import spec_plan
from twossp_core.plan.sizes import format_size
from twossp_core.plan.spec import parse_spec, parse_sweep_spec

LLAMA_7B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


def _spec(heal: dict | None, **fields):
    return parse_spec({"model": "meta-llama/Llama-2-7b-hf", "sparsity": 0.5, "seq_len": 2048, "dtype": "bfloat16",
                       "heal": heal, **fields})


def _peak(heal: dict | None, device: str, **fields) -> int:
    plan = spec_plan(_spec(heal, **fields), LLAMA_7B, device=device)
    assert plan.mode == "in-memory"
    return plan.device_peak


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_each_heal_option_moves_the_plan_its_way(device):
    none, lm, kd = _peak(None, device), _peak({"loss": "lm"}, device), _peak({}, device)
    assert none < lm < kd  # the heal trains (lm), and kd holds the dense teacher besides
    assert _peak({"params": "lora"}, device) < kd
    assert _peak({"gradient_checkpointing": True}, device) < kd
    assert _peak({"micro_batch_size": 1}, device) < _peak({"micro_batch_size": 4}, device) < kd
    assert _peak({"seq_len": 512}, device) < kd
    # a smaller student (a higher target sparsity) holds less; SliceGPT's target is not a parameter fraction
    assert _peak({}, device, sparsity=0.7) < kd < _peak({}, device, sparsity=0.3)
    assert _peak({}, device, method="slicegpt", sparsity=0.7) > _peak({}, device, sparsity=0.7)
    # full fine-tuning in bfloat16 holds float32 master weights besides (lm: no teacher in the job's dtype)
    assert _peak({"loss": "lm"}, device, dtype="float32") < lm


def test_a_sweep_holds_its_dense_model_through_every_heal():
    sweep = parse_sweep_spec({"model": "meta-llama/Llama-2-7b-hf", "methods": ["2ssp"], "sparsities": [0.5],
                              "seq_len": 2048, "dtype": "bfloat16", "heal": {"loss": "lm"}})
    assert spec_plan(sweep, LLAMA_7B, device="cuda").device_peak > _peak({"loss": "lm"}, "cuda")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_control_heals_a_dense_copy_beside_the_dense_model(device):
    """heal.control adds a phase before pruning: the whole dense model trains as the student, the dense model held
    beside it (nothing is loaded again): the phase of a heal whose student kept everything."""
    def heal_peak(heal: dict, **fields) -> int:
        peak = spec_plan(_spec(heal, **fields), LLAMA_7B, device=device).heal_peak
        assert peak is not None
        return peak

    assert heal_peak({"control": True}) > heal_peak({})
    assert heal_peak({"loss": "lm", "control": True}) > heal_peak({"loss": "lm"})  # lm: the dense model is held
    # the same as a sweep's heal of a model that kept every block parameter (sparsity 1 %: kept 0.99 + one block)
    whole = parse_sweep_spec({"model": "meta-llama/Llama-2-7b-hf", "methods": ["2ssp"], "sparsities": [0.01],
                              "seq_len": 2048, "dtype": "bfloat16", "heal": {"control": False}})
    sweep_peak = spec_plan(whole, LLAMA_7B, device=device).heal_peak
    assert heal_peak({"control": True}) == sweep_peak


def test_the_plan_says_when_the_heal_is_its_peak():
    plan = spec_plan(_spec({}), LLAMA_7B, device="cuda")
    assert plan.heal_peak == plan.device_peak
    assert f"heal phase {format_size(plan.heal_peak)} on the device" in plan.describe()
    assert spec_plan(_spec(None), LLAMA_7B, device="cuda").heal_peak is None
    assert "heal phase" not in spec_plan(_spec(None), LLAMA_7B, device="cuda").describe()


@pytest.mark.parametrize(("device", "budget"), [("cpu", "max_host_memory"), ("cuda", "max_device_memory")])
def test_a_budget_that_holds_the_pruning_but_not_the_heal_is_refused(device, budget):
    without = _peak(None, device)
    healed = spec_plan(_spec({}), LLAMA_7B, device=device)
    between = (without + healed.device_peak) // 2
    assert spec_plan(_spec(None, **{budget: between}), LLAMA_7B, device=device).mode == "in-memory"
    with pytest.raises(InvalidSpec, match="heal phase alone needs") as refused:
        spec_plan(_spec({}, **{budget: between}), LLAMA_7B, device=device)
    message = str(refused.value)
    assert "micro_batch_size" in message and "gradient_checkpointing" in message and "lora" in message
    # the heal runs in memory only: auto does not fall back to a block-by-block plan that would hold the pruning
    assert "(in-memory)" in message
    # what the advice names fits the same budget
    lighter = {"params": "lora", "gradient_checkpointing": True, "micro_batch_size": 1}
    assert spec_plan(_spec(lighter, **{budget: between}), LLAMA_7B, device=device).mode == "in-memory"


@pytest.mark.slow
@pytest.mark.parametrize("control", [[], ["--heal-control"]])
def test_a_real_healed_job_stays_within_its_plan(stories_model, stories_text, tmp_path, control):
    """The measured case: a stories260k 2ssp-refit job with a kd heal (windows of 512 tokens, 8 per step) peaked
    above a plan that left the heal out; its peak RSS is within the plan that counts it (with the heal's control
    too: a copy of the dense model trained beside it)."""
    out = tmp_path / "out"
    args = ["prune", "--model", str(stories_model), "--sparsity", "0.5", "--method", "2ssp-refit",
            "--calibration", f"{stories_text}:0:500", "--eval", f"{stories_text}:500:1000",
            "--doc-separator", "<|endoftext|>", "--calibration-windows", "4", "--eval-windows", "2",
            "--no-throughput", "--no-progress", "--heal", "kd", "--heal-option", "steps=2", *control,
            "--out", str(out)]
    result = subprocess.run([sys.executable, "-m", "twossp_core.cli", *args], capture_output=True, text=True,
                            env={**os.environ}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    memory = json.loads((out / "report.json").read_text())["memory"]
    plan, measured = memory["plan"], memory["measured"]["host_peak_rss"]
    assert plan["mode"] == "in-memory" and plan["heal_peak"] == plan["host_peak"]
    assert measured <= plan["host_peak"], (measured, plan)
    # the heal is what the job peaks on: above what the plan without it allows
    cfg = json.loads((Path(stories_model) / "config.json").read_text())
    no_heal = parse_spec({"model": str(stories_model), "sparsity": 0.5, "method": "2ssp-refit",
                          "calibration_windows": 4, "calibration": [str(stories_text)]})
    assert measured > spec_plan(no_heal, cfg, device="cpu", baseline=plan["baseline"]).host_peak
    print(f"stories260k kd heal: measured peak RSS {measured / 1e6:.2f} MB, planned {plan['host_peak'] / 1e6:.2f} MB")
