"""A sweep seen through its cells (torch-free, read-only): how far it is, its comparison so far, the timings of its
cells. The API shows a running sweep with it (`cells`, `GET /jobs/{id}/comparison`); the worker that writes a
sweep's comparison once every cell ended builds it from the same functions (worker/sweeps.py). State changes are
not made here: they are the lifecycle's (service/lifecycle.py)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Job, JobState
from service.lifecycle import cell_name
from twossp_core.comparison import comparison_row, failed_row, model_label, run_name

# the stages every cell runs before its method (their time is summed over the cells under these names); the rest are
# the cell's own, kept per cell as `<method>@<sparsity>/<stage>` as a one-process sweep names them
SHARED_STAGES = ("load", "calibration", "evaluate_dense", "zero_shot_dense")
SHARED_PREFIX = "control/"  # the heal's control: every cell runs its own today


def cells_of(session: Session, parent_ids: Iterable[str]) -> dict[str, list[Job]]:
    """The cells of each sweep, in the order they were submitted (methods x sparsities)."""
    ids = list(parent_ids)
    found: dict[str, list[Job]] = {parent_id: [] for parent_id in ids}
    if ids:
        rows = session.scalars(select(Job).where(Job.parent_id.in_(ids)).order_by(Job.created_at, Job.id))
        for cell in rows:
            found[cell.parent_id or ""].append(cell)
    return found


def models_of(spec: dict[str, Any]) -> list[str]:
    """The models a sweep (its stored spec) runs on, in order."""
    return list(spec.get("models") or []) or [spec["model"]]


def several_models(cells: Sequence[Job]) -> bool:
    return len({cell.model for cell in cells}) > 1


def ordered(spec: dict[str, Any], cells: Sequence[Job]) -> list[tuple[str, str, float, Job | None]]:
    """(model, method, sparsity, cell) in the order a one-process sweep runs them: each method, each sparsity (of
    each model, in order, for a sweep over several)."""
    by_key = {(cell.model, cell.method, float(cell.sparsity or 0.0)): cell for cell in cells}
    return [(model, method, float(sparsity), by_key.get((model, method, float(sparsity))))
            for model in models_of(spec) for method in spec["methods"] for sparsity in sorted(spec["sparsities"])]


def cell_path(cell: Job, several: bool) -> str:
    """The cell's folder under runs/ (and models/): `2ssp-0.25`, or `<model>/2ssp-0.25` in a sweep over several
    models."""
    name = run_name(cell.method or "?", cell.sparsity or 0.0)
    return f"{model_label(cell.model)}/{name}" if several else name


def counts(cells: Sequence[Job]) -> dict[str, int]:
    total = {state.value: 0 for state in JobState}
    for cell in cells:
        total[cell.state] = total.get(cell.state, 0) + 1
    return {"total": len(cells), **total}


def progress(cells: Sequence[Job]) -> float:
    """The cells' mean percent (an ended cell counts 100): the comparison written is the last step."""
    if not cells:
        return 0.0
    done = [100.0 if cell.state not in (JobState.queued.value, JobState.running.value) else cell.progress
            for cell in cells]
    return sum(done) / len(done)


def run_report(cell: Job) -> dict[str, Any] | None:
    """A succeeded cell's run report (runs/<method>-<sparsity>/report.json), without its sweep context."""
    if cell.state != JobState.succeeded.value or not cell.report:
        return None
    return {k: v for k, v in cell.report.items() if k != "sweep"}


def cell_context(cells: Sequence[Job]) -> dict[str, Any] | None:
    """The sweep context (dense measurements, data, runtime) of the first succeeded cell."""
    for cell in cells:
        if cell.state == JobState.succeeded.value and cell.report and cell.report.get("sweep"):
            return cell.report["sweep"]
    return None


def contexts(cells: Sequence[Job]) -> dict[str, dict[str, Any]]:
    """Each model's sweep context (from its first succeeded cell), in the cells' order."""
    found: dict[str, dict[str, Any]] = {}
    for cell in cells:
        if cell.model not in found:
            context = cell_context([c for c in cells if c.model == cell.model])
            if context is not None:
                found[cell.model] = context
    return found


def comparison(spec: dict[str, Any], cells: Sequence[Job]) -> tuple[list[dict[str, Any]], bool]:
    """The comparison rows of the cells that ended (a succeeded cell's row, or a row with the error of one that
    failed or was cancelled), in the sweep's order, each with its `model` in a sweep over several; and whether every
    cell ended."""
    rows: list[dict[str, Any]] = []
    complete = True
    several = len(models_of(spec)) > 1
    for model, method, sparsity, cell in ordered(spec, cells):
        if cell is None or cell.state in (JobState.queued.value, JobState.running.value):
            complete = False
            continue
        report = run_report(cell)
        row = (comparison_row(report) if report is not None
               else failed_row(method, sparsity, cell.error or f"cell {cell.state}"))
        rows.append({"model": model, **row} if several else row)
    return rows, complete


def stage_timings(cells: Sequence[Job]) -> dict[str, float]:
    """The cells' stage timings as a one-process sweep reports them: the setup stages summed over the cells, each
    cell's own stages under `<method>@<sparsity>/`."""
    timings: dict[str, float] = {}
    several = several_models(cells)
    for cell in cells:
        prefix = cell_name(cell.method, cell.sparsity)
        if several:
            prefix = f"{model_label(cell.model)}/{prefix}"
        for stage, seconds in (cell.stage_timings or {}).items():
            if stage in SHARED_STAGES or stage.startswith(SHARED_PREFIX):
                timings[stage] = round(timings.get(stage, 0.0) + seconds, 3)
            elif stage != "upload":
                timings[f"{prefix}/{stage}"] = seconds
    return timings


def cell_items(cells: Sequence[Job]) -> list[dict[str, Any]]:
    """One entry per cell: its job id, name, state, live stage and percent, error."""
    several = several_models(cells)
    return [
        {
            "id": cell.id, "name": cell_path(cell, several), "model": cell.model, "method": cell.method,
            "sparsity": cell.sparsity, "state": cell.state, "stage": cell.stage, "progress": round(cell.progress, 2),
            "queue": cell.queue, "error": cell.error,
        }
        for cell in cells
    ]
