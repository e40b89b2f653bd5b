"""Zero-shot accuracy of a dense model and of pruned models saved by `twossp sweep --save-models` (docs/methods.md,
"Zero-shot accuracy on a real model"), scored by `twossp eval` on the same items for every model.

    .venv/bin/python bench/zeroshot_table.py --dense DIR --sweep OUT1 [--sweep OUT2 ...] [--limit 200]
        [--mmlu-limit 5] [--jobs 2] [--out bench/results/zeroshot-smollm2-25]

Every model is scored twice, each time in its own `twossp eval` process on one torch thread (`--jobs` at once):
WinoGrande, ARC-e, ARC-c, HellaSwag and PIQA on their first `--limit` items, and MMLU on the first `--mmlu-limit`
items of each of its 57 subjects (MMLU has 57 × as many items per limit as the others, and at a 135 M model's
scale its accuracy sits near chance). Task data: $TWOSSP_TASK_DATA, else TWOSSP_TEST_DATA/tasks or
../shared/data/tasks. One report per model, task group and limit goes to OUT/<name>.<group>-<limit>.json (a second
run reuses it); the Markdown table (acc ± binomial standard error; HellaSwag and ARC also acc_norm in the JSON) is
printed and written to OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from twossp_core.evaluation.zeroshot.metrics import paired_difference
from twossp_core.example_data import example_data_dir

REPO = Path(__file__).resolve().parents[1]
FIVE = ["winogrande", "arc_easy", "arc_challenge", "hellaswag", "piqa"]
LABELS = {"winogrande": "WinoGrande", "arc_easy": "ARC-e", "arc_challenge": "ARC-c", "hellaswag": "HellaSwag",
          "piqa": "PIQA", "mmlu": "MMLU"}


def data_dir() -> Path:
    return example_data_dir(REPO, "TWOSSP_TEST_DATA")


def models(dense: Path, sweeps: list[Path]) -> list[tuple[str, Path, dict[str, Any]]]:
    """(name, directory, what the sweep's report says about it), the dense model first."""
    found: list[tuple[str, Path, dict[str, Any]]] = [("dense", dense, {})]
    for sweep in sweeps:
        for directory in sorted((sweep / "models").iterdir()):
            if not (directory / "config.json").exists():
                continue
            report_path = sweep / "runs" / directory.name / "report.json"
            report = json.loads(report_path.read_text()) if report_path.exists() else {}
            found.append((directory.name, directory, report))
    return found


def score(model: Path, tasks: list[str], limit: int, out: Path) -> dict[str, Any]:
    """One `twossp eval` process on one thread; its JSON report, kept in `out` (reused when already there)."""
    if out.exists():
        return json.loads(out.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("TWOSSP_TASK_DATA", str(data_dir() / "tasks"))
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "twossp_core.cli", "eval", "--model", str(model), "--tasks", ",".join(tasks),
         "--task-limit", str(limit), "--no-progress", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"twossp eval {model} --tasks {','.join(tasks)} failed:\n{result.stderr.strip()}")
    report = json.loads(result.stdout)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def cell(task: dict[str, Any]) -> str:
    """acc ± its standard error; a pruned model's with its paired difference from the dense model (Δ ± s.e.)."""
    scores = task["dense"]
    text = f"{100 * scores['acc']:.1f} ± {100 * scores['acc_stderr']:.1f}"
    if "delta" in task:
        text += f" (Δ {100 * task['delta'][0]:+.1f} ± {100 * task['delta'][1]:.1f})"
    return text


def paired(dense: dict[str, Any], model: dict[str, Any]) -> tuple[float, float] | None:
    """The model's acc minus the dense model's on the same items, with the paired standard error."""
    base, other = dense["dense"].get("acc_per_item"), model["dense"].get("acc_per_item")
    if not base or not other:
        return None
    mean, err = paired_difference(base, other)
    return mean, err or 0.0


def average_delta(tasks: dict[str, Any]) -> str:
    """The paired difference of the five-task average acc (tasks on separate items: standard errors add in
    quadrature)."""
    deltas = [tasks[t].get("delta") for t in FIVE]
    if any(d is None for d in deltas):
        return ""
    mean = sum(d[0] for d in deltas) / len(deltas)
    err = math.sqrt(sum(d[1] ** 2 for d in deltas)) / len(deltas)
    return f"{100 * mean:+.1f} ± {100 * err:.1f}"


def table(rows: list[tuple[str, dict[str, Any], dict[str, Any]]], limit: int, mmlu_limit: int) -> str:
    tasks_shown = FIVE + ["mmlu"]
    head = ["model", "achieved", "held-out ×"] + [f"{LABELS[t]}{' *' if t == 'hellaswag' else ''}" for t in tasks_shown]
    head += ["average (6)", "average (5, no MMLU)", "Δ average (5)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dense_tasks = rows[0][2]
    for name, report, tasks in rows:
        if name != "dense":
            for t in tasks_shown:
                difference = paired(dense_tasks[t], tasks[t])
                if difference is not None:
                    tasks[t] = {**tasks[t], "delta": difference}
        achieved = report.get("sparsity_achieved")
        ratio = (report.get("held_out") or {}).get("ratio")
        accs = [tasks[t]["dense"]["acc"] for t in FIVE + ["mmlu"]]
        first = [name, "" if achieved is None else f"{100 * achieved:.1f}%", "1.00" if not report else f"{ratio:.3f}"]
        lines.append("| " + " | ".join(
            first + [cell(tasks[t]) for t in tasks_shown]
            + [f"{100 * sum(accs) / 6:.1f}", f"{100 * sum(accs[:5]) / 5:.1f}", average_delta(tasks)]) + " |")
    n = {t: rows[0][2][t]["n"] for t in FIVE + ["mmlu"]}
    lines.append("")
    lines.append(f"acc in %, ± lm-eval's binomial standard error; (Δ ± s.e.): the difference from the dense model "
                 "on the same items, paired (the standard error of the mean per-item difference); "
                 f"the first {limit} items of each of the five tasks "
                 f"in file order, the first {mmlu_limit} of each MMLU subject ({n['mmlu']} items); 0-shot. "
                 "\\* HellaSwag read from the text extraction in the shared data (approximate, docs/zeroshot.md).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense", type=Path, required=True, help="the dense model directory")
    parser.add_argument("--sweep", type=Path, action="append", default=[], help="a sweep's --out (repeatable)")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--mmlu-limit", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "zeroshot-smollm2-25")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    found = models(args.dense, args.sweep)
    work = [(name, path, FIVE, args.limit, f"five-{args.limit}") for name, path, _ in found]
    work += [(name, path, ["mmlu"], args.mmlu_limit, f"mmlu-{args.mmlu_limit}") for name, path, _ in found]
    with ThreadPoolExecutor(args.jobs) as pool:
        reports = list(pool.map(lambda w: score(w[1], w[2], w[3], args.out / f"{w[0]}.{w[4]}.json"),
                                work))
    by_name: dict[str, dict[str, Any]] = {}
    for (name, *_), report in zip(work, reports, strict=True):
        by_name.setdefault(name, {}).update(report["zero_shot"]["tasks"])
    rows = [(name, report, by_name[name]) for name, _, report in found]
    text = table(rows, args.limit, args.mmlu_limit)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
