"""A sweep: several methods x several sparsities on one model, with one comparison at the end.

The model and data are loaded once, the dense model is measured once, and every run prunes a fresh copy of
the dense model while sharing `Workspace.cache`, so statistics of the dense model (2SSP neuron scores,
ShortGPT / window boundary states, SliceGPT PCA bases, EvoPress dense reference) are computed once. With a heal,
its control (the dense model healed the same way, heal.control: on by default here) is computed once too.

Writes into out_dir: comparison.json (a list of rows), comparison.md, comparison.png / .svg, sweep.json
(request, dense measurements, runtime) and runs/<method>-<sparsity>/report.json per run (plus
models/<method>-<sparsity>/ when save_models is set). A run that cannot reach its target (InfeasibleTarget,
UnsupportedModel) becomes a row with an `error` and the sweep goes on.

`run_sweep_cell` runs one (method, sparsity) of a sweep on its own, as the service's cell jobs do (each in its own
process, on any worker): the same `run_cell` on a workspace of its own (`cell_workspace`), the same report.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

from twossp_core.comparison import (
    COMPARISON_JSON,
    COMPARISON_MD,
    COMPARISON_PNG,
    COMPARISON_SVG,
    SWEEP_JSON,
    comparison_row,
    error_row,
    failed_row,
    run_name,
    write_comparison,
)
from twossp_core.errors import InfeasibleTarget, InvalidSpec, UnsupportedModel
from twossp_core.evaluation.throughput import Throughput
from twossp_core.pipeline import (
    StoredControl,
    Workspace,
    heal_control,
    measure_dense,
    prepare,
    run_cell,
    runtime_info,
    write_json_atomic,
)
from twossp_core.plan.spec import JobSpecBase, PruneSpec, SweepSpec
from twossp_core.plan.stages import run_prefix
from twossp_core.preflight import check_model
from twossp_core.progress import CancelFn, PrefixReporter, ProgressFn, Reporter
from twossp_core.shared import (
    CONTROL_FILE,
    DENSE_FILE,
    ArtifactCache,
    SharedCache,
    describe_control,
    describe_workspace,
    digest,
    load_or_compute,
)

__all__ = [
    "COMPARISON_JSON", "COMPARISON_MD", "COMPARISON_PNG", "COMPARISON_SVG", "SWEEP_JSON", "cell_workspace",
    "comparison_row", "dense_summary", "error_row", "failed_row", "run_name", "run_sweep", "run_sweep_cell",
]


def cell_workspace(spec: PruneSpec, reporter: Reporter, shared: ArtifactCache | None = None) -> Workspace:
    """Where a cell run on its own gets the dense model, the dense measurements (perplexities, throughput, zero-shot
    scores), with a heal the heal's control, and the statistics methods share (`Workspace.cache`). Without `shared`
    all of it is computed here, in the cell's process. With it (the service), each is read from the artifact an
    earlier run stored under its content key (twossp_core/shared.py), or computed here under that key's lock and
    stored for the others; `ws.shared` lists what was read and what was stored."""
    if shared is None:
        ws = prepare(spec, reporter)
        if spec.heal is not None and spec.heal.control:
            heal_control(ws, reporter)
        return ws
    ws = prepare(spec, reporter, measure=False)
    described = describe_workspace(ws, shared.file_digest)
    if described is None:  # the model's content cannot be told: nothing is shared
        measure_dense(ws, reporter)
        if spec.heal is not None and spec.heal.control:
            heal_control(ws, reporter)
        return ws
    key = digest(described)

    def compute_dense(out: Path) -> None:
        measure_dense(ws, reporter)
        write_json_atomic(out / DENSE_FILE, {
            "perplexity": ws.dense_perplexity,
            "throughput": ws.dense_throughput.as_dict() if ws.dense_throughput else None,
            "zero_shot": ws.dense_zero_shot,
        })

    def apply_dense(files: Path) -> None:
        record = json.loads((files / DENSE_FILE).read_text())
        ws.dense_perplexity = record["perplexity"]
        tp = record["throughput"]
        ws.dense_throughput = Throughput(tp["median"], tp["min"], tp["max"], tp["runs"]) if tp else None
        ws.dense_zero_shot = record["zero_shot"]
        reporter.update("evaluate_dense", 1.0)

    use = load_or_compute(shared, "dense", key, described, reporter.checkpoint, compute_dense, apply_dense)
    ws.shared.append(use.as_dict())
    if spec.heal is not None and spec.heal.control:
        control = describe_control(ws, key)

        def compute_control(out: Path) -> None:
            run = heal_control(ws, reporter)
            write_json_atomic(out / CONTROL_FILE, {"perplexity": run.perplexity, "report": run.report()})

        def apply_control(files: Path) -> None:
            record = json.loads((files / CONTROL_FILE).read_text())
            ws.control = StoredControl(record["perplexity"], record["report"])

        use = load_or_compute(shared, "control", digest(control), control, reporter.checkpoint, compute_control,
                              apply_control)
        ws.shared.append(use.as_dict())
    ws.cache = SharedCache(shared, key, reporter.checkpoint)
    return ws


def dense_summary(ws: Workspace, spec: JobSpecBase) -> dict[str, Any]:
    """The dense model's measurements as a sweep reports them (sweep.json's `dense`, the comparison's reference)."""
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
    return dense


def data_summary(ws: Workspace) -> dict[str, Any]:
    return {"seq_len": ws.seq_len, "calibration_windows": int(ws.calibration.shape[0]),
            "eval": {label: int(w.shape[0]) for label, w in ws.evals.items()}}


def run_sweep_cell(
    cell: PruneSpec,
    out_dir: Path,
    *,
    save_model: bool = False,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    shared: ArtifactCache | None = None,
) -> dict[str, Any]:
    """One (method, sparsity) of a sweep on its own: writes runs/<method>-<sparsity>/report.json (and, with
    `save_model`, models/<method>-<sparsity>/) into out_dir, as `run_sweep` writes that run. Returns the run's report
    with `sweep`: the dense measurements, data, setup timings and runtime the comparison needs, and (with `shared`,
    where the dense work is kept across processes) `shared`: each artifact it read ("reused from ...") or stored. A
    target the method cannot reach raises InfeasibleTarget or UnsupportedModel."""
    out_dir = Path(out_dir)
    reporter = Reporter(progress, should_cancel)
    start = time.perf_counter()
    check_model(cell)
    ws = cell_workspace(cell, reporter, shared)
    reporter.checkpoint()
    name = run_name(cell.method, cell.sparsity)
    run_dir = out_dir / "runs" / name
    model_dir = out_dir / "models" / name if save_model else None
    try:
        report, model = run_cell(ws, cell, reporter, model_dir=model_dir, plot_dir=run_dir, copy_model=False)
    finally:
        if isinstance(ws.cache, SharedCache):  # the statistics it extended are stored, its locks released
            ws.cache.flush()
    if isinstance(ws.cache, SharedCache):
        ws.shared.extend(ws.cache.iter_uses())
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "report.json", report)
    del model
    context = {
        "dense": dense_summary(ws, cell),
        "data": data_summary(ws),
        "timings": {**ws.timings, "total_s": time.perf_counter() - start},
        "runtime": runtime_info(ws),
    }
    if shared is not None:
        context["shared"] = ws.shared
    return {**report, "sweep": context}


def run_sweep(
    spec: SweepSpec,
    out_dir: Path,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Run every (method, sparsity) of the sweep; returns {"rows", "dense", "files", ...} and writes out_dir."""
    if spec.models:
        raise InvalidSpec(f"models: a sweep over {len(spec.models)} models runs in the service (one cell job per "
                          "model, method and sparsity); here, run one sweep per model")
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

    dense = dense_summary(ws, spec)
    reporter.update("comparison", 0.0)
    files = write_comparison(out_dir, rows, dense, spec.model)
    summary = {
        "spec": spec.model_dump(),
        "dense": dense,
        "data": data_summary(ws),
        "timings": {**ws.timings, "total_s": time.perf_counter() - start},
        "runtime": runtime_info(ws),
    }
    write_json_atomic(out_dir / SWEEP_JSON, summary)
    reporter.update("comparison", 1.0)
    return {**summary, "rows": rows, "files": [*files, SWEEP_JSON]}
