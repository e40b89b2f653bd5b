"""The heal's learning rate on a real model (docs/heal.md, "Learning rate and model size"): SmolLM2-135M-Instruct,
2SSP at 25 %, a CPU-sized kd heal (40 steps of 4 x 256 tokens) with its control at each rate, held-out C4 rows /
WikiText-2 / PTB (10 windows of 512 each), one bench/heal_control.py job per rate.

    .venv/bin/python bench/heal_lr.py                          # full fine-tuning at 3e-3, 1e-3, 3e-4, 1e-4; LoRA
    .venv/bin/python bench/heal_lr.py --table                  # only print the table from the saved reports

Reports: bench/results/heal-lr-smollm2/<variant>/report.json. The table: per variant the healed and control
perplexities per set and their geometric means over the sets relative to the dense model (x dense).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from heal_control import main as heal_control  # noqa: E402

from twossp_core.data.held_out import geometric_mean_ratio  # noqa: E402

OUT = REPO / "bench" / "results" / "heal-lr-smollm2"
BUDGET = {"steps": 40, "batch_size": 4, "seq_len": 256}
VARIANTS = {  # name: the heal's options besides the budget (no lr: the default for the model's size)
    "full-3e-3": {"lr": 3e-3}, "full-1e-3": {"lr": 1e-3}, "full-3e-4": {"lr": 3e-4}, "full-1e-4": {"lr": 1e-4},
    "lora-default": {"params": "lora"},
}


def table() -> str:
    lines = ["| heal | lr | C4 | WikiText-2 | PTB | healed × dense | control × dense |",
             "|---|---|---|---|---|---|---|"]
    for name in VARIANTS:
        path = OUT / name / "report.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        rows = report["perplexity"]
        if name == next(iter(VARIANTS)):
            dense = " | ".join(f"{r['dense']:.1f}" for r in rows)
            pruned = " | ".join(f"{r['pruned']:.1f}" for r in rows)
            ratio = geometric_mean_ratio((r["dense"], r["pruned"]) for r in rows)
            lines += [f"| dense | | {dense} | | |", f"| pruned, not healed | | {pruned} | {ratio:.3f} | |"]
        heal = report["heal"]
        healed = " | ".join(f"{r['healed']:.1f} ({r['dense_healed']:.1f})" for r in rows)
        means = [geometric_mean_ratio((r["dense"], r[key]) for r in rows) for key in ("healed", "dense_healed")]
        lines.append(f"| {heal['params']} | {heal['lr']:g} | {healed} | {means[0]:.3f} | {means[1]:.3f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", action="store_true", help="print the table from the saved reports only")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if not args.table:
        for name, options in VARIANTS.items():
            heal_control(["--model", "smollm2", "--sparsity", "0.25", "--eval-windows", "10", "--threads",
                          str(args.threads), "--out", str(OUT / name), "--heal", json.dumps({**BUDGET, **options})])
    print("C4, WikiText-2, PTB: healed (control) perplexity")
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
