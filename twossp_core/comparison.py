"""A sweep's comparison from its runs' reports (torch-free): one row per (method, sparsity), and the files that show
them (comparison.json, .md, .png, .svg). The one-process sweep (`twossp_core.sweep.run_sweep`) and the service,
which assembles a sweep's comparison from its cells' jobs, both write it here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twossp_core.report_table import comparison_markdown, plot_comparison

COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison.png"
COMPARISON_SVG = "comparison.svg"
SWEEP_JSON = "sweep.json"
COMPARISON_FILES = [COMPARISON_JSON, COMPARISON_MD, COMPARISON_PNG, COMPARISON_SVG]


def run_name(method: str, sparsity: float) -> str:
    """A run's folder under runs/ (and models/): `2ssp-0.25`."""
    return f"{method}-{sparsity:g}"


def comparison_row(report: dict[str, Any]) -> dict[str, Any]:
    tp = report.get("throughput_tokens_per_s") or {}
    dense_tp, pruned_tp = tp.get("dense"), tp.get("pruned")
    details = report.get("method_details") or {}
    row = {
        "method": report["method"],
        "sparsity_target": report["sparsity_target"],
        "sparsity_achieved": report["sparsity_achieved"],
        "perplexity": report["perplexity"],
        "held_out": report.get("held_out"),
        "prune_s": report["timings"]["prune_s"],
        "throughput_tokens_per_s": {"dense": dense_tp, "pruned": pruned_tp},
        # no speed-up when the timing is not a reliable comparison (the reasons instead)
        "speedup": (pruned_tp / dense_tp) if dense_tp and pruned_tp and not report.get("throughput_unreliable")
        else None,
        "throughput_unreliable": report.get("throughput_unreliable") or [],
        "params": report["params"],
        "removed_blocks": report["removed_blocks"],
        "removed_attention": report["removed_attention"],
        "removed_mlp": report["removed_mlp"],
        "kept_ffn_neurons": report["kept_ffn_neurons"],
        "heal_s": report["timings"].get("heal_s"),
        "error": None,
    }
    if report.get("zero_shot"):
        row["zero_shot"] = report["zero_shot"]
    if report.get("warnings"):  # e.g. a heal that made the model worse: never only in the run's own report
        row["warnings"] = report["warnings"]
    if "sparsity_meaning" in details:
        row["note"] = details["sparsity_meaning"]
    return row


def failed_row(method: str, sparsity: float, error: str) -> dict[str, Any]:
    """The row of a run that ended without a report: its error instead."""
    return {
        "method": method, "sparsity_target": sparsity, "sparsity_achieved": None, "perplexity": [],
        "prune_s": None, "throughput_tokens_per_s": None, "speedup": None, "error": error,
    }


def error_row(method: str, sparsity: float, exc: Exception) -> dict[str, Any]:
    return failed_row(method, sparsity, f"{type(exc).__name__}: {exc}")


def write_json_atomic(path: Path, data: Any) -> None:
    """As the pipeline writes report.json (the same bytes for the same data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def model_label(model: str) -> str:
    """A model's name in file names: a local directory's name, or a hub id with `--` for `/`."""
    path = Path(model)
    return path.name if path.is_absolute() else model.replace("/", "--")


def write_model_comparisons(
    out_dir: Path, rows: list[dict[str, Any]], dense: dict[str, dict[str, Any]]
) -> list[str]:
    """The comparison of a sweep over several models: comparison.json (every row, each with its `model`),
    comparison.md (one table per model) and one plot per model (comparison-<model>.png / .svg); `dense` is each
    model's dense measurements. Returns the files' names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / COMPARISON_JSON, rows)
    sections, files = [], [COMPARISON_JSON, COMPARISON_MD]
    for model, reference in dense.items():
        own = [{k: v for k, v in row.items() if k != "model"} for row in rows if row.get("model") == model]
        sections.append(comparison_markdown(own, reference, title=f"Comparison on {model}"))
        label = model_label(model)
        plots = [f"comparison-{label}.png", f"comparison-{label}.svg"]
        plot_comparison(own, reference, [out_dir / name for name in plots], title=label)
        files += plots
    (out_dir / COMPARISON_MD).write_text("\n\n".join(sections))
    return files


def write_comparison(out_dir: Path, rows: list[dict[str, Any]], dense: dict[str, Any], model: str) -> list[str]:
    """comparison.json, .md, .png and .svg of `rows` (against the `dense` measurements) into out_dir; their names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / COMPARISON_JSON, rows)
    (out_dir / COMPARISON_MD).write_text(comparison_markdown(rows, dense, title=f"Comparison on {model}"))
    plot_comparison(rows, dense, [out_dir / COMPARISON_PNG, out_dir / COMPARISON_SVG], title=Path(model).name)
    return list(COMPARISON_FILES)
