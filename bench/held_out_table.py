"""The held-out comparison table of a sweep written by bench/compare.sh, as Markdown (docs/methods.md, README).

One row per method and target sparsity: achieved sparsity, perplexity on every held-out set, the held-out summary
(geometric mean of pruned / dense perplexity over those sets), what was removed and the prune time; the dense model
first. The best summary of each sparsity is in bold.

    .venv/bin/python bench/held_out_table.py bench/results/comparison-smollm2
    .venv/bin/python bench/held_out_table.py --summary bench/results/comparison-c4llama-8l   # the README's pivot

It reads the runs' report.json files; several directories of the same model and protocol merge: a later
directory's run of a method and sparsity replaces an earlier one's (a method re-run alone with
`bench/compare.sh MODEL no-heal --methods NAME --out DIR2`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from twossp_core.sweep import comparison_row


def short(dataset: str) -> str:
    name = Path(dataset.split(":")[0]).name
    for key, label in (("c4-validation", "C4"), ("wikitext2", "WikiText-2"), ("ptb", "PTB"),
                       ("tinystories", "TinyStories")):
        if key in name:
            rows = dataset[len(dataset.split(":")[0]):]
            start, _, end = rows.strip(":").partition(":")
            return f"{label} [{start or 0}, {end or 'end'})" if rows else label
    return name


def removed(row: dict[str, Any]) -> str:
    parts = []
    if row.get("removed_blocks"):
        parts.append(f"blocks {row['removed_blocks']}")
    if row.get("removed_attention"):
        parts.append(f"attention {row['removed_attention']}")
    if row.get("removed_mlp"):
        parts.append(f"FFN {row['removed_mlp']}")
    if row.get("kept_ffn_neurons") is not None:
        parts.append(f"K {row['kept_ffn_neurons']}")
    return ", ".join(parts) or "—"


def merged_reports(directories: list[Path]) -> list[dict[str, Any]]:
    """Every run's report.json; a later directory's run of a method and sparsity replaces an earlier one's."""
    reports: dict[tuple[str, float], dict[str, Any]] = {}
    for directory in directories:
        for path in sorted((directory / "runs").glob("*/report.json")):
            report = json.loads(path.read_text())
            reports[(report["method"], report["sparsity_target"])] = report
    return list(reports.values())


def table(directories: list[Path]) -> str:
    everything = merged_reports(directories)
    reports = [r for r in everything if r.get("held_out")]
    stale = sorted(f"{r['method']}-{r['sparsity_target']:g}" for r in everything if not r.get("held_out"))
    rows = [comparison_row(report) for report in reports]
    done = [r for r in rows if not r.get("error")]
    if not done:
        return "no finished runs\n"
    entries = done[0]["perplexity"]
    held = [e["dataset"] for e in entries if e.get("domain") in ("in-domain", "out-of-domain")]
    domain = {e["dataset"]: e.get("domain", "") for e in entries}
    header = ["method", "target", "achieved", *[f"{short(d)} ({domain[d]})" for d in held], "held-out ×",
              "removed", "prune s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    dense = {e["dataset"]: e["dense"] for e in entries}
    lines.append("| dense | | | " + " | ".join(f"{dense[d]:.2f}" for d in held) + " | 1.00 | | |")
    best = {}
    for r in done:
        ratio = (r.get("held_out") or {}).get("ratio")
        if ratio is not None and ratio < best.get(r["sparsity_target"], float("inf")):
            best[r["sparsity_target"]] = ratio
    for r in sorted(rows, key=lambda r: (r["sparsity_target"], r["method"])):
        if r.get("error"):
            lines.append(f"| {r['method']} | {r['sparsity_target']:.1%} | " + " | ".join(["—"] * (len(held) + 2))
                         + f" | {r['error'][:80]} | |")
            continue
        ppl = {e["dataset"]: e["pruned"] for e in r["perplexity"]}
        ratio = r["held_out"]["ratio"]
        mark = "**" if ratio == best.get(r["sparsity_target"]) else ""
        lines.append(
            f"| {r['method']} | {r['sparsity_target']:.1%} | {r['sparsity_achieved']:.1%} | "
            + " | ".join(f"{ppl[d]:.2f}" for d in held)
            + f" | {mark}{ratio:.3f}{mark} | {removed(r)} | {r['prune_s']:.1f} |"
        )
    data, runtime = reports[0]["data"], reports[0]["runtime"]
    lines += ["", f"Windows of {data.get('seq_len')} tokens: {data.get('calibration_windows')} for calibration, "
              + ", ".join(f"{n} of {short(k)}" for k, n in (data.get("eval") or {}).items())
              + f" for evaluation; torch {runtime.get('torch')}, {runtime.get('threads')} thread(s)."]
    if stale:
        lines.append(f"Left out, from before held-out judging: {', '.join(stale)}.")
    return "\n".join(lines) + "\n"


METHOD_ORDER = ("2ssp", "2ssp-refit", "shortgpt", "window", "blockpruner", "slicegpt", "evopress")


def summary(directories: list[Path]) -> str:
    """The README's pivot: one row per method, one column per target sparsity, each cell the held-out summary and
    the achieved sparsity; the best of each column in bold."""
    rows = [comparison_row(r) for r in merged_reports(directories) if r.get("held_out")]
    done = [r for r in rows if not r.get("error")]
    targets = sorted({r["sparsity_target"] for r in done})
    cell = {(r["method"], r["sparsity_target"]): r for r in done}
    best = {t: min(r["held_out"]["ratio"] for r in done if r["sparsity_target"] == t) for t in targets}
    methods = sorted({r["method"] for r in done}, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)
    lines = ["| method | " + " | ".join(f"{t:.1%}" for t in targets) + " |", "|---|" + "---|" * len(targets)]
    for method in methods:
        cells = []
        for t in targets:
            r = cell.get((method, t))
            if r is None:
                cells.append("—")
                continue
            ratio = r["held_out"]["ratio"]
            mark = "**" if ratio == best[t] else ""
            cells.append(f"{mark}{ratio:.3f}{mark} ({r['sparsity_achieved']:.1%})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="bench/results/comparison-* directories")
    parser.add_argument("--summary", action="store_true",
                        help="print the README's pivot (held-out summary per method and sparsity) instead")
    args = parser.parse_args()
    print((summary if args.summary else table)(args.results), end="")


if __name__ == "__main__":
    main()
