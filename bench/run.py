"""twossp benchmark suite: one command, every ratio measured within the same run.

    python bench/run.py            # full: 12 blocks, hidden 512, 1,024-token windows (25-45 min on 2 cores)
    python bench/run.py --quick    # the same measurements on a small model (1-2 min on 2 cores)

Writes bench/results/<name>.json (full.json / quick.json). See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Under CPU oversubscription (other processes on the same cores) OpenMP's default spin-waiting makes a
# multi-threaded torch many times slower and the timings erratic; passive waiting keeps them meaningful.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from models import FULL, QUICK, BenchModel, build_model, calibration_windows  # noqa: E402
from reference import straightforward_neuron_scores  # noqa: E402

from twossp_core.models.registry import adapter_for  # noqa: E402
from twossp_core.plan.methods import METHODS, method_config  # noqa: E402
from twossp_core.pruning.base import PruneContext  # noqa: E402
from twossp_core.pruning.registry import method_class  # noqa: E402
from twossp_core.pruning.twossp import stage1, stage2  # noqa: E402
from twossp_core.pruning.twossp.config import TwoSSPConfig  # noqa: E402
from twossp_core.pruning.twossp.method import SCORES_CACHE_KEY, TwoSSP  # noqa: E402
from twossp_core.runtime.forward import BlockRunner, nll_sum  # noqa: E402

SPARSITIES = (0.25, 0.375, 0.5)
MAIN_SPARSITY = 0.375

DEFINITIONS = {
    "clock": "all times and ratios use this clock: cpu = CPU time of the benchmark process (torch on 1 thread by "
    "default, so it equals the time on an otherwise idle core and is robust to other load on a shared machine), "
    "wall = elapsed time; wall times are recorded next to every cpu time (wall_runs_s, *_wall ratios)",
    "stage2_speedup_vs_naive": "min wall time of 2SSP stage 2 in naive mode / in fast mode, same width-pruned model, "
    "sparsity 0.375 (stage2_speedup_vs_naive_by_sparsity: the same at each sparsity)",
    "one_round_bound": "per sparsity: the largest stage-2 speed-up input reuse can give in a round with nothing "
    "carried over, B(B+H) / (B-1 + B(B+1)/2 + B*H), H = LM head + NLL time / one block's time, both measured here",
    "decisions_identical": "fast and naive stage 2 removed the same attention modules in the same order with "
    "bit-identical calibration perplexities, in every repetition at every sparsity",
    "stage1_speedup_vs_straightforward": "straightforward stage 1 (full causal-LM pass incl. LM head, no_grad, norm "
    "hooks) / optimized stage 1, same windows",
    "speedup_vs_blockpruner": "BlockPruner prune wall time / whole 2SSP prune wall time (stage 1 + 2), same model, "
    "calibration and sparsity",
    "speedup_vs_evopress": "EvoPress prune wall time / whole 2SSP prune wall time, same model, calibration, sparsity",
    "param_ratio": "dense total parameters / pruned total parameters (the ideal speed-up)",
    "throughput_ratio": "pruned forward tokens/s / dense forward tokens/s (decoder + LM head, one window)",
    "throughput_vs_param_ratio": "throughput_ratio / param_ratio (target >= 0.9)",
    "peak_rss_over_weights": "(peak RSS of a child process pruning in place - its RSS before the model existed) / "
    "model weight bytes",
    "activation_bytes": "one window of activations: the hidden state entering every block for one window "
    "(blocks x seq_len x hidden x 4 bytes)",
}


# ---- helpers -------------------------------------------------------------------------------------------
def machine(threads: int) -> dict[str, Any]:
    import psutil
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


CLOCK = "cpu"  # which clock the ratios use; both are always recorded


def timed(fn: Callable[[], Any], walls: list[float] | None = None) -> tuple[float, Any]:
    """Seconds by CLOCK ("cpu": this process's CPU time, "wall": elapsed time); the wall time goes to `walls`."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if walls is not None:
        walls.append(wall)
    return (cpu if CLOCK == "cpu" else wall), out


def ctx_for(model: Any, calibration: torch.Tensor) -> PruneContext:
    return PruneContext(adapter=adapter_for(model), calibration=calibration, cache={})


def count_block_calls(model: Any) -> tuple[list[int], Callable[[], None]]:
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1

    handles = [layer.register_forward_pre_hook(hook) for layer in adapter_for(model).layers]
    return calls, lambda: [h.remove() for h in handles]


# ---- measurements ---------------------------------------------------------------------------------------
def bench_stage1(base: Any, calibration: torch.Tensor, repeats: int) -> dict[str, Any]:
    windows = calibration[: min(8, calibration.shape[0])]
    adapter = adapter_for(base)
    fast_t, ref_t, max_diff = [], [], 0.0
    walls: dict[str, list[float]] = {"straightforward": [], "optimized": []}
    for _ in range(repeats):
        t, ref = timed(lambda: straightforward_neuron_scores(adapter, windows), walls["straightforward"])
        ref_t.append(t)
        t, got = timed(lambda: stage1.neuron_scores(adapter, windows), walls["optimized"])
        fast_t.append(t)
        max_diff = max(max_diff, max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, ref, strict=True)))
    return {
        "windows": int(windows.shape[0]),
        "straightforward_s": min(ref_t),
        "optimized_s": min(fast_t),
        "stage1_speedup_vs_straightforward": min(ref_t) / min(fast_t),
        "wall_runs_s": walls,
        "max_relative_score_difference": max_diff,
    }


def bench_stage2(
    base: Any, calibration: torch.Tensor, repeats: int, cache: dict[str, Any], sparsity: float
) -> dict[str, Any]:
    cfg = TwoSSPConfig()
    ctx = ctx_for(base, calibration)
    plan = TwoSSP(cfg).plan(ctx, sparsity)
    widened = copy.deepcopy(base)
    if SCORES_CACHE_KEY not in cache:
        cache[SCORES_CACHE_KEY] = stage1.neuron_scores(adapter_for(base), calibration)
    stage1.apply_width(adapter_for(widened), cache[SCORES_CACHE_KEY], plan.kept_neurons)
    windows = calibration[: cfg.stage2_windows]
    bound = one_round_bound(widened, windows)
    times: dict[str, list[float]] = {"naive": [], "fast": []}
    decisions: dict[str, list[Any]] = {"naive": [], "fast": []}
    calls: dict[str, int] = {}
    walls: dict[str, list[float]] = {"naive": [], "fast": []}
    for rep in range(repeats):
        for mode in ("naive", "fast") if rep % 2 == 0 else ("fast", "naive"):
            model = copy.deepcopy(widened)
            counter, remove = count_block_calls(model)
            t, removals = timed(
                lambda m=model, mode=mode: stage2.greedy_attention_removal(adapter_for(m), windows, plan.num_attention,
                                                                          mode=mode),
                walls[mode],
            )
            remove()
            times[mode].append(t)
            decisions[mode].append([(r.block, r.perplexity) for r in removals])
            calls[mode] = counter[0]
            log(f"stage 2 at {sparsity}, {mode}: {t:.2f} s, removed {[r.block for r in removals]}")
            del model
    reference = decisions["naive"][0]
    identical = all(d == reference for runs in decisions.values() for d in runs)
    return {
        "sparsity": sparsity,
        "attention_removed": plan.num_attention,
        "stage2_windows": cfg.stage2_windows,
        "naive_s": min(times["naive"]),
        "fast_s": min(times["fast"]),
        "naive_runs_s": times["naive"],
        "fast_runs_s": times["fast"],
        "stage2_speedup_vs_naive": min(times["naive"]) / min(times["fast"]),
        "wall_runs_s": walls,
        "stage2_speedup_vs_naive_wall": min(walls["naive"]) / min(walls["fast"]),
        "block_calls": calls,
        "block_call_ratio": calls["naive"] / max(calls["fast"], 1),
        "one_round_bound": bound,
        "decisions_identical": identical,
        "removal_order": [b for b, _ in reference],
        "removal_perplexity": [p for _, p in reference],
    }


def one_round_bound(model: Any, windows: torch.Tensor) -> dict[str, float]:
    """The best speed-up over naive that input reuse can give in a round with nothing carried over.

    Naive runs B blocks and the LM head per candidate: B(B + H) block-equivalents, H = head (final norm, LM head,
    NLL) / one block. Reuse runs the recording pass (B - 1 blocks), then B - i blocks and the head for candidate i:
    B - 1 + B(B + 1)/2 + B·H. Block and head times are measured on this model and window."""
    adapter = adapter_for(model)
    runner = BlockRunner(adapter)
    record = runner.capture(windows[:1])
    blocks = adapter.num_blocks
    block_s, head_s = [], []
    with torch.inference_mode():
        for _ in range(3):
            t, hidden = timed(lambda: runner.run_from(record, 0))
            block_s.append(t / blocks)
            t, _ = timed(lambda h=hidden: nll_sum(adapter, adapter.final_norm(h), record.input_ids))
            head_s.append(t)
    head = min(head_s) / min(block_s)
    naive = blocks * (blocks + head)
    reuse = blocks - 1 + blocks * (blocks + 1) / 2 + blocks * head
    return {"block_s": min(block_s), "head_s": min(head_s), "head_in_blocks": head, "bound": naive / reuse}


def bench_methods(base: Any, calibration: torch.Tensor, repeats: int, skip: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"sparsity": MAIN_SPARSITY, "calibration_windows": int(calibration.shape[0])}
    runs: list[tuple[str, str, dict[str, Any], int]] = [
        ("2ssp", "2ssp", {}, repeats),
        ("2ssp_naive_stage2", "2ssp", {"stage2_mode": "naive"}, 1),
        ("blockpruner", "blockpruner", {}, 1),
        ("evopress", "evopress", {}, 1),
    ]
    for label, method, options, reps in runs:
        if label in skip or method in skip:
            out[label] = {"skipped": "excluded with --skip"}
            continue
        if method not in METHODS:
            out[label] = {"skipped": f"method {method!r} is not registered"}
            continue
        times: list[float] = []
        walls: list[float] = []
        details: dict[str, Any] = {}
        for _ in range(reps):
            model = copy.deepcopy(base)
            ctx = ctx_for(model, calibration)
            t, outcome = timed(lambda m=method, o=options, c=ctx: method_class(m)(method_config(m, o)).prune(
                c, MAIN_SPARSITY), walls)
            times.append(t)
            details = {
                "removed_attention": outcome.removed_attention,
                "removed_mlp": outcome.removed_mlp,
                "removed_blocks": outcome.removed_blocks,
                "kept_ffn_neurons": outcome.kept_ffn_neurons,
                "timings": outcome.timings,
                "options": method_config(method, options).model_dump(),
                "details": outcome.details,
            }
            del model, ctx
        out[label] = {"prune_s": min(times), "runs_s": times, "prune_wall_s": min(walls), "wall_runs_s": walls,
                      **details}
        log(f"{label}: {min(times):.2f} s")
    return out


def forward_seconds(model: Any, window: torch.Tensor) -> float:
    adapter = adapter_for(model)
    with torch.inference_mode():
        t, _ = timed(lambda: adapter.head(adapter.decoder(input_ids=window, use_cache=False).last_hidden_state))
        return t


def bench_throughput(base: Any, calibration: torch.Tensor, rounds: int, cache: dict[str, Any]) -> dict[str, Any]:
    models: dict[str, Any] = {"dense": base}
    pruned_params: dict[str, int] = {}
    for s in SPARSITIES:
        model = copy.deepcopy(base)
        ctx = PruneContext(adapter=adapter_for(model), calibration=calibration, cache=cache)
        method_class("2ssp")(method_config("2ssp", {})).prune(ctx, s)
        models[str(s)] = model
        pruned_params[str(s)] = adapter_for(model).total_params()
    window = calibration[:1]
    for m in models.values():  # warm-up
        forward_seconds(m, window)
    samples: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):  # interleaved so that background load hits every model alike
        for key, m in models.items():
            samples[key].append(forward_seconds(m, window))
    tokens = window.numel()
    tps = {k: tokens / min(v) for k, v in samples.items()}
    dense_params = adapter_for(base).total_params()
    out: dict[str, Any] = {
        "tokens_per_forward": tokens,
        "rounds": rounds,
        "dense_tokens_per_s": tps["dense"],
        "dense_total_params": dense_params,
        "median_tokens_per_s": {k: tokens / statistics.median(v) for k, v in samples.items()},
        "pruned_tokens_per_s": {},
        "pruned_total_params": pruned_params,
        "param_ratio": {},
        "throughput_ratio": {},
        "throughput_vs_param_ratio": {},
    }
    for s in SPARSITIES:
        key = str(s)
        out["pruned_tokens_per_s"][key] = tps[key]
        out["param_ratio"][key] = dense_params / pruned_params[key]
        out["throughput_ratio"][key] = tps[key] / tps["dense"]
        out["throughput_vs_param_ratio"][key] = out["throughput_ratio"][key] / out["param_ratio"][key]
    return out


def bench_memory(spec: BenchModel, calibration: torch.Tensor, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "windows.pt"
        torch.save(calibration.clone(), path)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        proc = subprocess.run(
            [sys.executable, str(BENCH / "rss_child.py"), spec.name, str(path), str(MAIN_SPARSITY)],
            capture_output=True, text=True, env=env, check=False,
        )
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    import resource

    child = json.loads(proc.stdout.strip().splitlines()[-1])
    children_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    # ru_maxrss is a lifetime peak: it only speaks for the prune when it grew during the prune
    grew = child["ru_maxrss_bytes"] > child["ru_maxrss_before_prune_bytes"]
    peak = max(child["poll_peak_rss_bytes"], child["ru_maxrss_bytes"]) if grew else child["poll_peak_rss_bytes"]
    over = peak - child["baseline_rss_bytes"]
    weights = child["weights_bytes"]
    activations = spec.layers * spec.seq_len * spec.hidden * 4
    budget = 1.5 * weights + activations
    return {
        **child,
        "parent_rusage_children_maxrss_bytes": children_maxrss,
        "peak_over_baseline_bytes": over,
        "activation_bytes": activations,
        "budget_bytes": budget,
        "peak_rss_over_weights": over / weights,
        "peak_over_budget": over / budget,
        "peak_source": "max(poll, ru_maxrss)" if grew else "poll (ru_maxrss was reached before the prune)",
        "method": "child process builds the model and prunes it in place with 2SSP at sparsity "
        f"{MAIN_SPARSITY}; peak = 1 ms psutil RSS poll during the prune, or the child's ru_maxrss if that grew "
        "during the prune; baseline = child RSS after importing torch/transformers/twossp_core, loading the token "
        "windows and pruning a throw-away 2-block model (lazy imports and kernel initialisation), before the "
        "benchmark model is built",
    }


# ---- main -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, same measurements")
    parser.add_argument("--name", help="results file name (default: full or quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: stable timings on a shared machine)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="clock of the reported times and ratios (default cpu: this process's CPU time, robust to "
                        "other load on a shared machine at 1 thread); wall times are recorded as well")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions of the timed 2SSP runs")
    parser.add_argument("--skip", default="", help="comma-separated: stage1,stage2,blockpruner,evopress,"
                        "2ssp_naive_stage2,throughput,memory")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = args.clock
    spec = QUICK if args.quick else FULL
    name = args.name or spec.name
    repeats = args.repeats or (2 if args.quick else 2)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    started = time.perf_counter()
    result: dict[str, Any] = {"name": name, "clock": CLOCK, "machine": machine(args.threads), "model": spec.describe()}
    log(f"building {spec.name} model and {spec.calibration_windows} calibration windows")
    base = build_model(spec)
    calibration = calibration_windows(spec, spec.calibration_windows)
    adapter = adapter_for(base)
    result["model"].update(
        total_params=adapter.total_params(), block_params=adapter.blocks_params(),
        weight_bytes=sum(p.numel() * p.element_size() for p in base.parameters()),
    )

    scores_cache: dict[str, Any] = {}  # stage-1 scores of the dense model, shared by the untimed set-ups

    def section(key: str, title: str, fn: Callable[[], Any]) -> None:
        if key in skip or key.split("_")[0] in skip:
            return
        log(title)
        try:
            result[key] = fn()
        except Exception as exc:  # one failing section must not lose the others' measurements
            log(f"{key} failed: {exc!r}")
            result[key] = {"error": repr(exc)}

    section("stage1", "stage 1: optimized vs straightforward", lambda: bench_stage1(base, calibration, repeats))
    section("stage2_by_sparsity", "stage 2: fast vs naive", lambda: {
        str(sp): bench_stage2(base, calibration, repeats, scores_cache, sp) for sp in SPARSITIES})
    if "stage2_by_sparsity" in result and "error" not in result["stage2_by_sparsity"]:
        result["stage2"] = result["stage2_by_sparsity"][str(MAIN_SPARSITY)]
    section("methods", "whole prune: 2SSP vs BlockPruner vs EvoPress",
            lambda: bench_methods(base, calibration, repeats, skip))
    section("throughput", "throughput: dense vs pruned",
            lambda: bench_throughput(base, calibration, 10 if args.quick else 6, scores_cache))
    section("memory", "peak RSS while pruning (child process)", lambda: bench_memory(spec, calibration, args.threads))

    summarize(result)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["bench_wall_s"] = time.perf_counter() - started
    out = BENCH / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    print(json.dumps({k: result[k] for k in ("stage2_speedup_vs_naive", "decisions_identical", "speedup_vs_blockpruner",
                                             "speedup_vs_evopress", "param_ratio", "throughput_ratio",
                                             "peak_rss_over_weights", "targets")}, indent=2))
    return 0


def _prune_s(result: dict[str, Any], label: str) -> float | None:
    entry = result.get("methods", {}).get(label, {})
    return entry.get("prune_s")


def summarize(result: dict[str, Any]) -> None:
    """Headline numbers and targets at the top level of the JSON."""
    s2 = result.get("stage2", {})
    result["stage2_speedup_vs_naive"] = s2.get("stage2_speedup_vs_naive")
    result["stage2_speedup_vs_naive_wall"] = s2.get("stage2_speedup_vs_naive_wall")
    by_sparsity = result.get("stage2_by_sparsity", {}) if "stage2" in result else {}
    result["decisions_identical"] = all(v["decisions_identical"] for v in by_sparsity.values()) if s2 else None
    result["stage2_speedup_vs_naive_by_sparsity"] = {k: v["stage2_speedup_vs_naive"] for k, v in by_sparsity.items()}
    result["stage1_speedup_vs_straightforward"] = result.get("stage1", {}).get("stage1_speedup_vs_straightforward")
    ours = _prune_s(result, "2ssp")
    reasons: dict[str, str] = {}
    ours_wall = result.get("methods", {}).get("2ssp", {}).get("prune_wall_s")
    for label in ("blockpruner", "evopress"):
        theirs = _prune_s(result, label)
        result[f"speedup_vs_{label}"] = theirs / ours if theirs is not None and ours else None
        theirs_wall = result.get("methods", {}).get(label, {}).get("prune_wall_s")
        result[f"speedup_vs_{label}_wall"] = theirs_wall / ours_wall if theirs_wall and ours_wall else None
        if result[f"speedup_vs_{label}"] is None:
            reasons[label] = result.get("methods", {}).get(label, {}).get("skipped", "not measured")
    if reasons:
        result["null_reasons"] = reasons
    tp = result.get("throughput", {}) if "error" not in result.get("throughput", {}) else {}
    result["param_ratio"] = tp.get("param_ratio")
    result["throughput_ratio"] = tp.get("throughput_ratio")
    result["peak_rss_over_weights"] = result.get("memory", {}).get("peak_rss_over_weights")
    result["definitions"] = DEFINITIONS

    def at_least(value: float | None, bound: float) -> bool | None:
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value >= bound

    mem = result.get("memory", {})
    result["targets"] = {
        "stage2_speedup_vs_naive>=2_and_identical": None if s2 == {} else bool(
            at_least(result["stage2_speedup_vs_naive"], 2.0) and result["decisions_identical"]),
        "speedup_vs_blockpruner>=1.5": at_least(result["speedup_vs_blockpruner"], 1.5),
        "speedup_vs_evopress>=20": at_least(result["speedup_vs_evopress"], 20.0),
        "throughput_ratio>=0.9*param_ratio": None if not tp else {
            k: v >= 0.9 for k, v in tp["throughput_vs_param_ratio"].items()},
        "peak_rss<=1.5*weights+activations": None if "budget_bytes" not in mem else (
            mem["peak_over_baseline_bytes"] <= mem["budget_bytes"]),
    }


if __name__ == "__main__":
    raise SystemExit(main())
