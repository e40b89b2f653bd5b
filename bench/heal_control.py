"""A heal judged against its control (docs/heal.md's "Against the control" table): one pruning job with the default
heal and `heal.control`, on the held-out sets of bench/compare.sh, reported as dense / pruned / healed / dense healed
the same way per set, with the geometric mean over the sets.

    .venv/bin/python bench/heal_control.py                      # c4llama-8l, 2ssp at 37.5 %, the default heal
    .venv/bin/python bench/heal_control.py --method blockpruner --sparsity 0.5
    .venv/bin/python bench/heal_control.py --heal '{"steps": 400}'
    .venv/bin/python bench/heal_control.py --model smollm2 --sparsity 0.25 --eval-windows 10 \
        --heal '{"steps": 40, "batch_size": 4, "seq_len": 256, "lr": 1e-4}'   # a real model, a CPU-sized heal

Data: $TWOSSP_TEST_DATA (default ../shared/data). c4llama-8l is calibrated on C4 rows [0, 1000) and evaluated on
C4 rows [1000, 2000) (in-domain), WikiText-2 test and PTB test (out-of-domain), and so is smollm2
(SmolLM2-135M-Instruct, the directory scripts/smollm2.sh writes once); stories260k on TinyStories
documents [0, 500) and evaluated on documents [500, 1000), WikiText-2 test and PTB test. 512-token windows, 32
calibration windows, at most 40 evaluation windows per set (--eval-windows). Writes the job's report.json and model
card to bench/results/heal-control-<model>-<method>-<sparsity>/ and prints the table in Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from twossp_core.data.held_out import geometric_mean_ratio  # noqa: E402
from twossp_core.example_data import example_data_dir  # noqa: E402
from twossp_core.plan.spec import parse_spec  # noqa: E402

ROWS = (("dense", "dense"), ("pruned", "pruned"), ("healed", "healed"), ("dense healed (control)", "dense_healed"))


def protocol(model: str) -> dict[str, object]:
    data = example_data_dir(REPO, "TWOSSP_TEST_DATA")
    held_out = [str(data / "text" / "wikitext2-raw-test.txt"), str(data / "text" / "ptb.test.txt")]
    if model in ("c4llama-8l", "smollm2"):
        c4 = data / "text" / "c4-validation-2k.jsonl"
        return {"model": smollm2() if model == "smollm2" else str(data / "models" / model),
                "calibration": [f"{c4}:0:1000"],
                "eval": [f"{c4}:1000:2000", *held_out]}
    if model == "stories260k":
        stories = data / "text" / "tinystories-val-1000.txt"
        return {"model": str(data / "models" / model), "calibration": [f"{stories}:0:500"],
                "eval": [f"{stories}:500:1000", *held_out], "doc_separator": "<|endoftext|>"}
    raise SystemExit(f"unknown model {model!r}: c4llama-8l, smollm2 or stories260k")


def smollm2() -> str:
    """The plain SmolLM2-135M-Instruct directory (written once by scripts/smollm2.sh, which prints it last)."""
    out = subprocess.run(["bash", str(REPO / "scripts" / "smollm2.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def table(report: dict) -> str:
    entries = report["perplexity"]
    names = [Path(e["dataset"]).name for e in entries]
    lines = ["| | " + " | ".join(names) + " | × dense | × control |", "|---|" + "---|" * (len(names) + 2)]
    for label, key in ROWS:  # the last two columns: geometric means over the sets of the row / dense, / control
        means = [geometric_mean_ratio((e[ref], e[key]) for e in entries) for ref in ("dense", "dense_healed")]
        lines.append(f"| {label} | " + " | ".join(f"{e[key]:.1f}" for e in entries) + " | "
                     + " | ".join(f"{m:.3f}" for m in means) + " |")
    lines.append("| healed / control | " + " | ".join(f"{e['healed'] / e['dense_healed']:.3f}" for e in entries)
                 + " | | |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="c4llama-8l", choices=["c4llama-8l", "smollm2", "stories260k"])
    p.add_argument("--method", default="2ssp")
    p.add_argument("--sparsity", type=float, default=0.375)
    p.add_argument("--heal", default="{}", help="the heal object as JSON (default: the default heal)")
    p.add_argument("--eval-windows", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the other benchmarks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="results folder (default bench/results/heal-control-MODEL-METHOD-SPARSITY)")
    args = p.parse_args(argv)

    import torch

    from twossp_core.pipeline import run_prune

    torch.set_num_threads(args.threads)
    heal = {**json.loads(args.heal), "control": True}
    spec = parse_spec({**protocol(args.model), "method": args.method, "sparsity": args.sparsity, "seq_len": 512,
                       "calibration_windows": 32, "eval_windows": args.eval_windows, "seed": args.seed,
                       "measure_throughput": False, "device": "cpu", "heal": heal})
    default = REPO / "bench" / "results" / f"heal-control-{args.model}-{args.method}-{args.sparsity:g}"
    out = (args.out or default).resolve()
    start, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:  # the pruned model itself is not kept
        report = run_prune(spec, Path(tmp) / "job")
        out.mkdir(parents=True, exist_ok=True)
        for name in ("report.json", "README.md", "heal_loss.png"):
            shutil.copy(Path(tmp) / "job" / name, out / name)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    t = report["timings"]
    print(f"{args.model}, {args.method} at {args.sparsity:g} (achieved {report['sparsity_achieved']:.4f}), heal "
          f"{report['heal']['steps']} steps of {report['heal']['options']['batch_size']} x {report['heal']['seq_len']} "
          f"tokens, seed {args.seed}, {args.eval_windows} windows per set, torch threads {args.threads}")
    print(table(report))
    print(f"heal {t['heal_s']:.0f} s, control heal {t['control_heal_s']:.0f} s, whole job {wall:.0f} s wall "
          f"({cpu:.0f} s of CPU time, load average {os.getloadavg()[0]:.1f}); results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
