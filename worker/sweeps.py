"""Writing a sweep's comparison once every cell of it ended (torch-free).

The worker that ends a sweep's last cell writes it right after (worker/runner.py), and the reaper writes any that
nobody wrote (the last cell was killed, failed in the reaper, or its process died first). The comparison is claimed
like a job (`lifecycle.claim_comparison`: an attempt, a lease renewed by a heartbeat, fenced writes), assembled from
the cells' reports in the sweep's order (methods x sparsities, as `run_sweep` writes it: a cell that failed or was
cancelled becomes a row with its error), uploaded as the sweep's artifact (comparison.json, .md, .png, .svg,
sweep.json and runs/<method>-<sparsity>/report.json) and the sweep finished: succeeded, or failed when no cell
succeeded.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from service import lifecycle
from service import sweeps as views
from service.db.models import Job, JobState
from service.db.session import Database
from service.settings import Settings
from service.store import ArtifactStore

log = logging.getLogger(__name__)
DONE_STAGE = "done"
COMPARISON_STAGE = "comparison"
UPLOAD_STAGE = "upload"


class _Beat(threading.Thread):
    """Renews the comparison attempt's lease while it is written; notes a cancel or a fence."""

    def __init__(self, db: Database, settings: Settings, claim: lifecycle.Claim) -> None:
        super().__init__(name=f"comparison-{claim.job_id}", daemon=True)
        self.db, self.settings, self.claim = db, settings, claim
        self.stage = COMPARISON_STAGE
        self.stopped: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.settings.heartbeat_s):
            try:
                with self.db.session() as session:
                    cancel = lifecycle.heartbeat(session, self.claim, self.settings.lease_seconds, self.stage, 99.0,
                                                 {})
            except Exception as exc:  # the lease has slack
                log.warning("comparison heartbeat for sweep %s failed: %s", self.claim.job_id, exc)
                continue
            if cancel is None or cancel:
                self.stopped = "fenced" if cancel is None else "cancelled"

    def halt(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def write_comparison_if_ready(
    db: Database, store: ArtifactStore, settings: Settings, parent_id: str, worker_id: str
) -> str | None:
    """Write the sweep's comparison if every cell of it ended and nobody writes it yet; the sweep's final state, or
    None when there was nothing to do here."""
    with db.session() as session:
        claim = lifecycle.claim_comparison(session, parent_id, worker_id, settings.lease_seconds)
    if claim is None:
        return None
    beat = _Beat(db, settings, claim)
    beat.start()
    work = settings.scratch_root / parent_id / f"comparison-{claim.attempt}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        return _write(db, store, claim, work, beat)
    finally:
        beat.halt()
        shutil.rmtree(work, ignore_errors=True)


def _finish(db: Database, claim: lifecycle.Claim, state: JobState, error: str | None = None, **values: Any) -> bool:
    with db.session() as session:
        return lifecycle.finish(session, claim, state, error=error, **values)


def _write(db: Database, store: ArtifactStore, claim: lifecycle.Claim, work: Path, beat: _Beat) -> str:
    from twossp_core.comparison import SWEEP_JSON, write_comparison, write_json_atomic, write_model_comparisons

    started = time.monotonic()
    try:
        with db.session() as session:
            parent = session.get(Job, claim.job_id)
            assert parent is not None
            cells = views.cells_of(session, [parent.id])[parent.id]
            spec, model, sweep_started = dict(parent.spec), parent.model, parent.started_at or parent.created_at
            session.expunge_all()
        rows, _ = views.comparison(spec, cells)
        timings = views.stage_timings(cells)
        context = views.cell_context(cells)
        several = len(views.models_of(spec)) > 1
        if context is None:
            errors = [f"{row['method']}@{row['sparsity_target']:g}: {row['error']}" for row in rows]
            error = f"every cell of the sweep failed ({'; '.join(errors)})"[:4000]
            _finish(db, claim, JobState.failed, error, stage=COMPARISON_STAGE, stage_timings=timings)
            return JobState.failed.value
        out = work / "out"
        for cell in cells:
            report = views.run_report(cell)
            if report is not None:
                write_json_atomic(out / "runs" / views.cell_path(cell, several) / "report.json", report)
        summary: dict[str, Any]
        if several:  # a model column, one table and one plot per model, each model's dense measurements
            by_model = {model: c["dense"] for model, c in views.contexts(cells).items()}
            write_model_comparisons(out, rows, by_model)
            summary = {"models": views.models_of(spec), "dense_by_model": by_model}
        else:
            write_comparison(out, rows, context["dense"], model)
            summary = {"dense": context["dense"]}
        summary.update({
            "data": context["data"],
            "timings": _timings(cells, sweep_started),
            "runtime": context["runtime"],
            "cells": views.cell_items(cells),
            "shared": _shared(cells),
        })
        write_json_atomic(out / SWEEP_JSON, {"spec": spec, **summary})
        timings[COMPARISON_STAGE] = round(time.monotonic() - started, 3)
        beat.stage = UPLOAD_STAGE
        upload_started = time.monotonic()
        artifact = store.upload_dir(out, claim.job_id, claim.attempt)
        timings[UPLOAD_STAGE] = round(time.monotonic() - upload_started, 3)
        if beat.stopped == "fenced":
            return "fenced"
        if _finish(db, claim, JobState.succeeded, require_no_cancel=True, stage=DONE_STAGE, progress=100.0,
                   stage_timings=timings, report={"rows": rows, **summary}, artifact=artifact):
            return JobState.succeeded.value
        if _finish(db, claim, JobState.cancelled, lifecycle.CANCELLED_BY_USER, stage_timings=timings):
            return JobState.cancelled.value
        return "fenced"
    except Exception as exc:
        log.exception("writing the comparison of sweep %s failed", claim.job_id)
        _finish(db, claim, JobState.failed, f"internal error writing the comparison: {type(exc).__name__}: {exc}")
        return JobState.failed.value


def _shared(cells: list[Job]) -> list[dict[str, Any]]:
    """The dense work the cells shared (twossp_core/shared.py): per artifact, which cell computed it (none: every cell
    reused it from an earlier sweep) and which cells read it."""
    found: dict[str, dict[str, Any]] = {}
    several = views.several_models(cells)
    for cell in cells:
        for use in ((cell.report or {}).get("sweep") or {}).get("shared") or []:
            entry = found.setdefault(use["artifact"], {"artifact": use["artifact"], "kind": use["kind"],
                                                       "computed_by": None, "reused_by": []})
            name = views.cell_path(cell, several)
            if use["reused"]:
                entry["reused_by"].append(name)
            else:
                entry["computed_by"] = name
    return list(found.values())


def _timings(cells: list[Job], started: datetime) -> dict[str, Any]:
    """The setup's seconds summed over the cells (each cell loads and measures the dense model), each cell's own
    seconds, and the sweep's wall time from its first cell's start to now."""
    from service.db.types import utcnow

    total: dict[str, Any] = {}
    per_cell: dict[str, float] = {}
    several = views.several_models(cells)
    for cell in cells:
        own = ((cell.report or {}).get("sweep") or {}).get("timings") or {}
        for key, seconds in own.items():
            if key != "total_s" and isinstance(seconds, int | float):
                total[key] = total.get(key, 0.0) + seconds
        if "total_s" in own:
            per_cell[views.cell_path(cell, several)] = own["total_s"]
    return {**total, "cells_s": per_cell, "total_s": (utcnow() - started).total_seconds()}
