"""What the pages show of a sweep: its cells (one row each, linking to the cell's job page), its comparison so far as
a chart (the rows `GET /jobs/{id}/comparison` answers, from the same functions), and, in the jobs list, how many of
its cells ended (counted in SQL, so a page of large sweeps loads no cell rows)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.ui import charts
from service import sweeps
from service.db.models import Job, JobKind, JobState
from twossp_core.comparison import model_label

PENDING = (JobState.queued.value, JobState.running.value)


@dataclass
class CellSummary:
    """How many of a sweep's cells are in each state, and their summed percent (an ended cell counts 100)."""

    states: dict[str, int] = field(default_factory=dict)
    percent_sum: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.states.values())

    @property
    def running(self) -> int:
        return self.states.get(JobState.running.value, 0)

    @property
    def ended(self) -> int:
        return self.total - self.running - self.states.get(JobState.queued.value, 0)

    @property
    def failed(self) -> int:
        return self.states.get(JobState.failed.value, 0)

    @property
    def cancelled(self) -> int:
        return self.states.get(JobState.cancelled.value, 0)

    def shown(self, job: Job) -> tuple[str | None, float]:
        """The sweep's stage and percent as `GET /jobs/{id}` states them (api/schemas.py, `JobOut.from_row`): while it
        is pending, its cells' mean percent (99 at most until the comparison is written) and, unless its comparison
        is being written, `cells: N of M ended, R running`."""
        if not self.total or job.state not in PENDING:
            return job.stage, job.progress
        progress = max(job.progress, 0.99 * self.percent_sum / self.total)
        stage = job.stage
        if job.worker_id is None:
            stage = f"cells: {self.ended} of {self.total} ended, {self.running} running"
        return stage, progress


def summaries(session: Session, jobs: Iterable[Job]) -> dict[str, CellSummary]:
    """The cells' summary of each sweep among `jobs` (one grouped query)."""
    ids = [job.id for job in jobs if job.kind == JobKind.sweep.value]
    found = {parent_id: CellSummary() for parent_id in ids}
    if not ids:
        return found
    query = (select(Job.parent_id, Job.state, func.count(), func.coalesce(func.sum(Job.progress), 0.0))
             .where(Job.parent_id.in_(ids)).group_by(Job.parent_id, Job.state))
    for parent_id, state, count, percent in session.execute(query):
        summary = found[parent_id]
        summary.states[state] = int(count)
        summary.percent_sum += float(percent) if state in PENDING else 100.0 * int(count)
    return found


def held_out(report: dict[str, Any] | None) -> dict[str, float] | None:
    """A run's held-out summary: {ratio, healed} (healed when the run was healed), or None without one."""
    block = (report or {}).get("held_out") or {}
    if not isinstance(block.get("ratio"), int | float):
        return None
    out = {"ratio": float(block["ratio"])}
    if isinstance(block.get("healed_ratio"), int | float):
        out["healed"] = float(block["healed_ratio"])
    return out


def cell_rows(cells: Sequence[Job]) -> list[dict[str, Any]]:
    """One row per cell for the cells table, in the sweep's order."""
    several = sweeps.several_models(cells)
    rows = []
    for cell in cells:
        report = sweeps.run_report(cell)
        rows.append({
            "id": cell.id, "name": sweeps.cell_path(cell, several), "model": model_label(cell.model),
            "model_path": cell.model, "method": cell.method, "sparsity": cell.sparsity, "state": cell.state,
            "stage": cell.stage, "progress": cell.progress, "error": cell.error,
            "achieved": (report or {}).get("sparsity_achieved"), "held_out": held_out(report),
        })
    return rows


def _order(spec: dict[str, Any], cells: Sequence[Job]) -> list[Job]:
    """The cells in the sweep's order (each model, each method, each sparsity); any other after them."""
    ordered = [cell for *_, cell in sweeps.ordered(spec, cells) if cell is not None]
    seen = {cell.id for cell in ordered}
    return ordered + [cell for cell in cells if cell.id not in seen]


def comparison_charts(spec: dict[str, Any], rows: list[dict[str, Any]], ended: int, total: int) -> list[Markup]:
    """The comparison so far as charts: the held-out summary against sparsity, one line per method, one chart per
    model (the rows of a sweep over several models carry their `model`)."""
    models = sweeps.models_of(spec)
    out = []
    for model in models:
        points = [
            {"method": row["method"], "target": float(row["sparsity_target"]),
             "sparsity": float(row["sparsity_achieved"] if row.get("sparsity_achieved") is not None
                               else row["sparsity_target"]),
             "ratio": ratio["ratio"]}
            for row in rows
            if row.get("model", model) == model and not row.get("error") and (ratio := held_out(row))
        ]
        if points:
            title = f"Held-out summary on {model_label(model)} ({ended} of {total} cells ended)"
            out.append(charts.held_out_chart(points, [float(s) for s in spec.get("sparsities") or []], title=title))
    return out


def sweep_context(session: Session, job: Job) -> dict[str, Any]:
    """The cells table and the comparison so far of a sweep (empty for a sweep from before cells)."""
    cells = sweeps.cells_of(session, [job.id])[job.id]
    if not cells:
        return {"cells": [], "partial_charts": []}
    cells = _order(job.spec, cells)
    rows, complete = sweeps.comparison(job.spec, cells)
    summary = sweeps.counts(cells)
    ended = summary["total"] - summary[JobState.queued.value] - summary[JobState.running.value]
    return {
        "cells": cell_rows(cells), "cell_counts": summary, "cells_ended": ended,
        "several_models": sweeps.several_models(cells), "comparison_complete": complete,
        "partial_charts": comparison_charts(job.spec, rows, ended, len(cells)),
        "partial_rows": len(rows),
    }
