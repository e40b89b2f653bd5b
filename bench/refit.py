"""2ssp-refit's cost next to stage 1: refit time as a fraction of stage-1 time, and the memory the refit holds.

One process, one random Llama, one set of calibration windows (random token ids: the cost does not depend on
the text). Stage 1 (the neuron scores on the dense model) is timed, then each refit mode on a fresh copy of the
model: with stage2_on_refit=true, stage 1 inside the sequential pass (copy of the dense blocks, one pass that scores,
slices and refits block by block; its cost is reported as what it adds to stage 1), then the pass repeated after
stage 2 from the middle block (as when stage 2 removes that block's attention); the default after a separate stage 1
(copy of the dense blocks, slicing, one sequential pass that re-chooses each block's neurons and shrinks each refit by
cross-validation; the backward elimination of one block is also timed alone, on random statistics of the block's
shape); the sequential refit of stage 1's neurons without the shrinkage (copy of the dense blocks, slicing, one
sequential pass with the residual target); and the dense-input refit (one accumulation pass, slicing, one solve per
block). Stage 2 itself is not timed.

    python bench/refit.py                                 # CPU, 8 blocks of hidden 512 / FFN 1,376 (minutes)
    python bench/refit.py --shape 7b --device cuda --dtype bfloat16   # Llama-2-7B blocks on a GPU

Writes bench/results/refit-<name>.json (default name: the shape, plus the device when it is not the CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from twossp_core.models.registry import adapter_for  # noqa: E402
from twossp_core.pruning.twossp import stage1  # noqa: E402
from twossp_core.pruning.twossp.balance import plan_balance  # noqa: E402
from twossp_core.pruning.twossp.scores import top_k  # noqa: E402
from twossp_core.pruning.twossp_refit import refit  # noqa: E402
from twossp_core.pruning.twossp_refit.sequential import copy_dense_blocks, sequential_refit  # noqa: E402

SHAPES: dict[str, dict[str, int]] = {
    # blocks, hidden, FFN, heads, key-value heads, vocabulary, calibration windows, window length
    "cpu": dict(layers=8, hidden=512, intermediate=1376, heads=8, kv_heads=4, vocab=4096, windows=16, seq_len=512),
    "7b": dict(layers=32, hidden=4096, intermediate=11008, heads=32, kv_heads=32, vocab=32000, windows=32,
               seq_len=2048),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build(shape: dict[str, int], device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"], max_position_embeddings=max(2048, shape["seq_len"]),
    )
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    model.config.use_cache = False
    return model


class Clock:
    """Wall seconds with the device synchronised (CUDA), else this process's CPU seconds (shared machines)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--sparsity", type=float, default=0.375)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--windows", type=int, help="calibration windows (default: the shape's)")
    parser.add_argument("--layers", type=int, help="blocks (default: the shape's)")
    parser.add_argument("--name", help="results file name (default: the shape, plus the device if not the CPU)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    shape = dict(SHAPES[args.shape])
    if args.windows:
        shape["windows"] = args.windows
    if args.layers:
        shape["layers"] = args.layers
    clock = Clock(device)
    model = build(shape, device, dtype)
    adapter = adapter_for(model)
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, shape["vocab"], (shape["windows"], shape["seq_len"]), generator=gen).to(device)
    plan = plan_balance(
        blocks=adapter.num_blocks, sparsity=args.sparsity, mlp_params=adapter.mlp_params(0),
        attn_params=adapter.attention_params(0), block_params_total=adapter.blocks_params(),
        intermediate_size=adapter.intermediate_size, round_to=8,
    )
    result: dict[str, Any] = {
        "shape": shape, "device": str(device), "dtype": args.dtype, "sparsity": args.sparsity,
        "kept_ffn_neurons": plan.kept_neurons, "threads": args.threads,
        "clock": "wall (CUDA synchronised)" if device.type == "cuda" else "process CPU time",
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
    }
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, K {plan.kept_neurons}", flush=True)

    stage1.neuron_scores(adapter, windows[:1])  # warm-up (kernels, allocator)
    peak_reset(device)
    t = clock.now()
    scores = stage1.neuron_scores(adapter, windows)
    stage1_s = clock.now() - t
    result["stage1"] = {"seconds": stage1_s, "peak_device_bytes": peak(device)}
    print(f"stage 1: {stage1_s:.2f} s", flush=True)

    # stage2_on_refit=true: stage 1 inside the first sequential pass (its dense path scores the neurons), residual
    # target, stage 1's neurons
    work = copy.deepcopy(model)
    work_adapter = adapter_for(work)
    peak_reset(device)
    t = clock.now()
    dense_layers = copy_dense_blocks(work_adapter)
    blocks, fused_scores = sequential_refit(work_adapter, dense_layers, windows, ridge=1e-3, slice_to=plan.kept_neurons)
    fused_s = clock.now() - t
    same = fused_scores is not None and all(torch.equal(a, b) for a, b in zip(scores, fused_scores, strict=True))
    result["stage1_in_refit_pass"] = {
        "seconds": fused_s, "extra_over_stage1_s": fused_s - stage1_s,
        "fraction_of_stage1": (fused_s - stage1_s) / stage1_s, "peak_device_bytes": peak(device),
        "scores_equal_stage1": same, "rejected_blocks": [b.block for b in blocks if b.kept_sliced],
    }
    print(f"stage 1 inside the refit pass: {fused_s:.2f} s = stage 1 + {(fused_s - stage1_s) / stage1_s:.2f} x "
          f"stage 1 (scores equal stage 1's: {same})", flush=True)

    # the pass after stage 2, from the first block whose input changed (here the middle block)
    start = adapter.num_blocks // 2
    kept = [top_k(s, plan.kept_neurons) for s in scores]
    work_adapter.remove_attention(start)
    peak_reset(device)
    t = clock.now()
    sequential_refit(work_adapter, dense_layers, windows, ridge=1e-3, kept=kept, start=start)
    repeat_s = clock.now() - t
    result["repeat_after_stage2"] = {"from_block": start, "seconds": repeat_s,
                                     "fraction_of_stage1": repeat_s / stage1_s, "peak_device_bytes": peak(device)}
    print(f"repeated pass from block {start}: {repeat_s:.2f} s = {repeat_s / stage1_s:.2f} x stage 1", flush=True)
    del work, work_adapter, dense_layers

    # the default: stage 1's scores given; copy the dense blocks, slice, one sequential pass that re-chooses each
    # block's neurons (selection=reconstruction) and shrinks each refit by two-fold cross-validation
    work = copy.deepcopy(model)
    work_adapter = adapter_for(work)
    peak_reset(device)
    t = clock.now()
    dense_layers = copy_dense_blocks(work_adapter)
    stage1.apply_width(work_adapter, scores, plan.kept_neurons)
    blocks, _ = sequential_refit(work_adapter, dense_layers, windows, ridge=1e-3, select=plan.kept_neurons,
                                 shrink=True)
    default_s = clock.now() - t
    gen_stats = torch.Generator().manual_seed(1)
    width = shape["intermediate"]
    sample = torch.randn(4096, width, generator=gen_stats, dtype=torch.float64).to(device)
    gram, cross = sample.T @ sample, sample.T @ torch.randn(4096, shape["hidden"], generator=gen_stats,
                                                             dtype=torch.float64).to(device)
    t = clock.now()
    refit.select_neurons(gram, cross, plan.kept_neurons, 1e-3)
    elimination_s = clock.now() - t
    result["default"] = {
        "seconds": default_s, "fraction_of_stage1": default_s / stage1_s, "peak_device_bytes": peak(device),
        "elimination_s_per_block": elimination_s, "alpha": [b.alpha for b in blocks],
        "rejected_blocks": [b.block for b in blocks if b.kept_sliced],
    }
    print(f"default pass (selection, cross-validated shrinkage): {default_s:.2f} s = {default_s / stage1_s:.2f} x "
          f"stage 1 (the elimination alone {elimination_s:.2f} s per block)", flush=True)
    del work, work_adapter, dense_layers, sample, gram, cross

    # separate passes: stage 1's scores given; copy the dense blocks, slice, one sequential pass (stage 1's neurons,
    # no shrinkage)
    work = copy.deepcopy(model)
    work_adapter = adapter_for(work)
    peak_reset(device)
    t = clock.now()
    dense_layers = copy_dense_blocks(work_adapter)
    stage1.apply_width(work_adapter, scores, plan.kept_neurons)
    blocks, _ = sequential_refit(work_adapter, dense_layers, windows, ridge=1e-3)
    seq_s = clock.now() - t
    result["sequential"] = {
        "seconds": seq_s, "fraction_of_stage1": seq_s / stage1_s, "peak_device_bytes": peak(device),
        "dense_blocks_bytes": sum(p.numel() * p.element_size() for m in dense_layers for p in m.parameters()),
        "dense_blocks_device": str(next(dense_layers[0].parameters()).device),
        "boundary_states_bytes": windows.numel() * shape["hidden"] * torch.finfo(dtype).bits // 8 * 2,
        "rejected_blocks": [b.block for b in blocks if b.kept_sliced],
    }
    print(f"sequential refit (stage 1's neurons): {seq_s:.2f} s = {seq_s / stage1_s:.2f} x stage 1", flush=True)
    del work, work_adapter, dense_layers

    # dense inputs: one accumulation pass on the dense model, slice, one solve per block
    work = copy.deepcopy(model)
    work_adapter = adapter_for(work)
    peak_reset(device)
    t = clock.now()
    stats = refit.accumulate(work_adapter, windows, [top_k(s, plan.kept_neurons) for s in scores])
    stage1.apply_width(work_adapter, scores, plan.kept_neurons)
    blocks = refit.apply_refit(work_adapter, stats, 1e-3)
    dense_s = clock.now() - t
    result["dense"] = {
        "seconds": dense_s, "fraction_of_stage1": dense_s / stage1_s, "peak_device_bytes": peak(device),
        "accumulator_bytes": sum(s.nbytes() for s in stats if s is not None),
        "rejected_blocks": [b.block for b in blocks if b.kept_sliced],
    }
    print(f"dense-input refit: {dense_s:.2f} s = {dense_s / stage1_s:.2f} x stage 1", flush=True)

    name = args.name or (args.shape if device.type == "cpu" else f"{args.shape}-{device.type}")
    out = REPO / "bench" / "results" / f"refit-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out.relative_to(REPO)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
