"""Block-by-block execution on a model larger than its host memory budget.

    python bench/block_by_block.py           # a 2.2 GB (fp32) 22-block Llama, --max-host-memory = 40 % of it
    python bench/block_by_block.py --quick   # a 6-block, 72 MB model forced block by block (no budget: the
                                             # interpreter alone is larger than 40 % of it)

Generates a random Llama (bench/models.py's init, the stories260k tokenizer and TinyStories text) as a
safetensors directory, then runs the same `twossp prune` job in fresh processes: in memory, and with
`--max-host-memory` = 40 % of the weight bytes (which `auto` turns into block-by-block execution); by default
four times, in memory, block by block, block by block, in memory (`--repeats 1`: once each). Records each job's
measured peak RSS (VmHWM, the interpreter and torch included, from report.json), its timings, its processes' CPU
and wall seconds and its decisions, and writes bench/results/block_by_block[_quick].json. The time overhead is
the ratio of the block-by-block runs' seconds to the in-memory runs'. Nothing is asserted; the numbers are
measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from models import BenchModel, data_dir  # noqa: E402

FULL = BenchModel("block-full", layers=22, hidden=1536, intermediate=4096, heads=12, kv_heads=4, seq_len=128,
                  calibration_windows=4, tokenizer="stories260k", text="tinystories-val-1000.txt", vocab=512)
QUICK = BenchModel("block-quick", layers=6, hidden=512, intermediate=1376, heads=8, kv_heads=4, seq_len=128,
                   calibration_windows=4, tokenizer="stories260k", text="tinystories-val-1000.txt", vocab=512)
BUDGET_FRACTION = 0.4
SPARSITY = 0.375
DECISION_KEYS = ("removed_attention", "removed_mlp", "removed_blocks", "kept_ffn_neurons", "sparsity_achieved",
                 "perplexity", "method_details", "params")


def generate(spec: BenchModel, out: Path) -> None:
    """Child process: build the model, save it with the tokenizer (so the parent never holds it)."""
    from models import build_model
    from transformers import AutoTokenizer

    model = build_model(spec)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(data_dir() / "models" / spec.tokenizer).save_pretrained(out)


def weight_bytes(directory: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in directory.glob("*.safetensors"):
        with safe_open(str(path), "pt") as fh:
            for name in fh.keys():
                sl = fh.get_slice(name)
                count = 1
                for d in sl.get_shape():
                    count *= d
                total += count * 4  # float32
    return total


def run_job(model_dir: Path, out: Path, spec: BenchModel, extra: list[str]) -> dict[str, Any]:
    text = data_dir() / "text" / spec.text
    cmd = [
        sys.executable, "-m", "twossp_core.cli", "prune", "--model", str(model_dir), "--sparsity", str(SPARSITY),
        "--calibration", f"{text}:0:300", "--eval", f"{text}:500:1000", "--doc-separator", "<|endoftext|>",
        "--seq-len", str(spec.seq_len), "--calibration-windows", str(spec.calibration_windows),
        "--eval-windows", "4", "--device", "cpu", "--no-throughput", "--no-progress", "--json", "--out", str(out),
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    t0, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise RuntimeError(f"job failed ({result.returncode}): {result.stderr[-3000:]}")
    report = json.loads(result.stdout)
    plan_line = next((line for line in result.stderr.splitlines() if line.startswith("memory plan")), None)
    return {"report": report, "wall_s": wall, "cpu_s": cpu, "plan_line": plan_line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, choices=(1, 2), default=2,
                        help="runs per mode (2: in memory, block by block, block by block, in memory)")
    parser.add_argument("--generate", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    spec = QUICK if args.quick else FULL
    if args.generate:
        generate(spec, Path(args.generate))
        return
    root = Path(tempfile.mkdtemp(prefix="twossp-bench-bbb-"))
    try:
        model_dir = root / "model"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, *(["--quick"] if args.quick else []), "--generate", str(model_dir)],
                       check=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=3600)
        generate_s = time.perf_counter() - t0
        weights = weight_bytes(model_dir)
        budget = None if args.quick else int(BUDGET_FRACTION * weights)
        options = {"in-memory": ["--execution", "in-memory"],
                   "budget": ["--execution", "block-by-block"] if args.quick else ["--max-host-memory", str(budget)]}
        # in memory, block by block, then (with --repeats 2) block by block and in memory again: a load that
        # drifts during the run weighs on both modes alike
        order = ["in-memory", "budget", "budget", "in-memory"][: 2 * args.repeats] if args.repeats > 1 else [
            "in-memory", "budget"]
        seconds: dict[str, dict[str, list[float]]] = {name: {"wall_s": [], "cpu_s": []} for name in options}
        runs: dict[str, dict[str, Any]] = {}
        outputs: dict[str, Path] = {}
        for i, name in enumerate(order):
            outputs[name] = root / f"{name}-{i}"
            run = run_job(model_dir, outputs[name], spec, options[name])
            seconds[name]["wall_s"].append(run["wall_s"])
            seconds[name]["cpu_s"].append(run["cpu_s"])
            runs[name] = run
        reports = {k: v["report"] for k, v in runs.items()}
        same = {key: reports["in-memory"].get(key) == reports["budget"].get(key) for key in DECISION_KEYS}
        from safetensors.torch import load_file

        exported = [load_file(outputs[name] / "model.safetensors") for name in runs]
        same["exported_tensors"] = exported[0].keys() == exported[1].keys() and all(
            exported[0][k].equal(exported[1][k]) for k in exported[0])
        del exported
        summary: dict[str, Any] = {}
        for name, run in runs.items():
            memory = run["report"]["memory"]
            summary[name] = {
                "mode": memory["mode"],
                "plan_line": run["plan_line"],
                "planned_host_peak_bytes": memory["plan"]["host_peak"],
                "peak_rss_bytes": memory["measured"]["host_peak_rss"],
                "rss_at_start_bytes": memory["measured"]["host_rss_at_start"],
                "peak_reset_at_start": memory["measured"]["host_peak_reset_at_start"],
                "block_reads": memory["block_reads"],
                "timings": run["report"]["timings"],
                "process_wall_s": seconds[name]["wall_s"],
                "process_cpu_s": seconds[name]["cpu_s"],
            }
        a, b = summary["in-memory"]["timings"], summary["budget"]["timings"]
        results = {
            "model": spec.describe(),
            "weights_bytes": weights,
            "host_budget_bytes": budget,
            "budget_fraction_of_weights": BUDGET_FRACTION,
            "sparsity": SPARSITY,
            "generate_s": generate_s,
            "runs": summary,
            "budget_run_peak_rss_under_budget":
                None if budget is None else summary["budget"]["peak_rss_bytes"] <= budget,
            "budget_run_peak_rss_over_weights": summary["budget"]["peak_rss_bytes"] / weights,
            "in_memory_peak_rss_over_weights": summary["in-memory"]["peak_rss_bytes"] / weights,
            "identical": same,
            "overhead": {
                # whole job processes, summed over the repeats: CPU seconds (user + system) and wall seconds
                "process_cpu_s_ratio": sum(seconds["budget"]["cpu_s"]) / sum(seconds["in-memory"]["cpu_s"]),
                "process_wall_s_ratio": sum(seconds["budget"]["wall_s"]) / sum(seconds["in-memory"]["wall_s"]),
                # the last run of each mode, from its report's wall-clock timings
                "total_s_ratio": b["total_s"] / a["total_s"],
                "prune_s_ratio": b["prune_s"] / a["prune_s"],
                "stage1_s_ratio": b["stage1_s"] / a["stage1_s"],
                "stage2_s_ratio": b["stage2_s"] / a["stage2_s"],
                "evaluate_dense_s_ratio": b["evaluate_dense_s"] / a["evaluate_dense_s"],
                "export_s_ratio": b["export_s"] / a["export_s"],
            },
            "machine": {"cpu_count": os.cpu_count(), "loadavg_end": os.getloadavg()},
        }
        out = BENCH / "results" / f"block_by_block{'_quick' if args.quick else ''}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({k: results[k] for k in ("weights_bytes", "host_budget_bytes",
                                                  "budget_run_peak_rss_under_budget", "identical", "overhead")},
                         indent=2))
        print(f"written to {out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
