"""A sweep: several methods x several sparsities on one model, with one comparison at the end.

The model and data are loaded once, the dense model is measured once, and every run prunes a fresh copy of
the dense model while sharing `Workspace.cache`, so statistics of the dense model (2SSP neuron scores,
ShortGPT / window boundary states, SliceGPT PCA bases, EvoPress dense reference) are computed once. With a heal,
its control (the dense model healed the same way, heal.control: on by default here) is computed once too.

Writes into out_dir: comparison.json (a list of rows), comparison.md, comparison.png / .svg, sweep.json
(request, dense measurements, runtime) and runs/<method>-<sparsity>/report.json per run (plus
models/<method>-<sparsity>/ when save_models is set). A run that cannot reach its target (InfeasibleTarget,
UnsupportedModel) becomes a row with an `error` and the sweep goes on.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

from twossp_core.errors import InfeasibleTarget, UnsupportedModel
from twossp_core.pipeline import (
    heal_control,
    prepare,
    run_cell,
    runtime_info,
    write_json_atomic,
)
from twossp_core.plan.spec import SweepSpec
from twossp_core.plan.stages import run_prefix
from twossp_core.progress import CancelFn, PrefixReporter, ProgressFn, Reporter
from twossp_core.report_table import comparison_markdown, plot_comparison

COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
COMPARISON_PNG = "comparison.png"
COMPARISON_SVG = "comparison.svg"
SWEEP_JSON = "sweep.json"


def run_name(method: str, sparsity: float) -> str:
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
    if "sparsity_meaning" in details:
        row["note"] = details["sparsity_meaning"]
    return row


def error_row(method: str, sparsity: float, exc: Exception) -> dict[str, Any]:
    return {
        "method": method, "sparsity_target": sparsity, "sparsity_achieved": None, "perplexity": [],
        "prune_s": None, "throughput_tokens_per_s": None, "speedup": None, "error": f"{type(exc).__name__}: {exc}",
    }


def run_sweep(
    spec: SweepSpec,
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Run every (method, sparsity) of the sweep; returns {"rows", "dense", "files", ...} and writes out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reporter = Reporter(progress, should_cancel)
    start = time.perf_counter()
    first = spec.prune_spec(spec.methods[0], spec.sparsities[0])
    ws = prepare(first, reporter, plan_spec=spec)
    if spec.heal is not None and spec.heal.control:
        heal_control(ws, reporter)  # once: every run's healed model is judged against the same healed dense model
    rows: list[dict[str, Any]] = []
    for method in spec.methods:
        for sparsity in spec.sparsities:
            reporter.checkpoint()
            name = run_name(method, sparsity)
            run_reporter = PrefixReporter(reporter, run_prefix(method, sparsity))  # e.g. shortgpt@0.25/influence
            run_dir = out_dir / "runs" / name
            model_dir = out_dir / "models" / name if spec.save_models else None
            try:
                report, model = run_cell(ws, spec.prune_spec(method, sparsity), run_reporter, model_dir=model_dir,
                                         plot_dir=run_dir, copy_model=True)
            except (InfeasibleTarget, UnsupportedModel) as exc:
                rows.append(error_row(method, sparsity, exc))
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(run_dir / "report.json", report)
            rows.append(comparison_row(report))
            del model
            gc.collect()
            write_json_atomic(out_dir / COMPARISON_JSON, rows)

    dense: dict[str, Any] = {
        "perplexity": [{"dataset": k, "perplexity": v} for k, v in ws.dense_perplexity.items()],
        "throughput_tokens_per_s": ws.dense_throughput.median if ws.dense_throughput else None,
        "params": ws.dense_params,
        # the windows each evaluation set gave, and the cap on them: a capped set is labelled as such
        "eval_windows": {label: int(w.shape[0]) for label, w in ws.evals.items()},
        "eval_cap": spec.eval_windows,
    }
    if ws.zero_shot_tasks:
        from twossp_core.evaluation.zeroshot.evaluate import zero_shot_report

        dense["zero_shot"] = zero_shot_report(ws.zero_shot_tasks, spec.task_limit, {"dense": ws.dense_zero_shot})
    if ws.control is not None:  # the dense model healed the same way: each entry's `healed`, and the heal itself
        for entry in dense["perplexity"]:
            entry["healed"] = ws.control.perplexity[entry["dataset"]]
        dense["control"] = ws.control.report()
    reporter.update("comparison", 0.0)
    write_json_atomic(out_dir / COMPARISON_JSON, rows)
    (out_dir / COMPARISON_MD).write_text(comparison_markdown(rows, dense, title=f"Comparison on {spec.model}"))
    plot_comparison(rows, dense, [out_dir / COMPARISON_PNG, out_dir / COMPARISON_SVG], title=Path(spec.model).name)
    summary = {
        "spec": spec.model_dump(),
        "dense": dense,
        "data": {"seq_len": ws.seq_len, "calibration_windows": int(ws.calibration.shape[0]),
                 "eval": {label: int(w.shape[0]) for label, w in ws.evals.items()}},
        "timings": {**ws.timings, "total_s": time.perf_counter() - start},
        "runtime": runtime_info(ws),
    }
    write_json_atomic(out_dir / SWEEP_JSON, summary)
    reporter.update("comparison", 1.0)
    files = [COMPARISON_JSON, COMPARISON_MD, COMPARISON_PNG, COMPARISON_SVG, SWEEP_JSON]
    return {**summary, "rows": rows, "files": files}
