"""A sweep on the dashboard, through the real app on SQLite: its cells table (a row per cell job, linking to it, with
its state, live stage, held-out summary or error), the comparison chart as the cells finish (the rows that
`GET /jobs/{id}/comparison` answers), the final chart from the artifact once the comparison is written, a cell's page
linking back to its sweep, and the jobs list showing a sweep with its cells' count instead of the cells. The cells
move through the service's lifecycle (claim, heartbeat, finish) as a worker would move them; no model runs."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.services.jobs import submit_job
from service import lifecycle
from service.db.models import Job, JobState, User
from service.keys import create_key, user_for_key
from service.sweeps import ordered
from worker.sweeps import write_comparison_if_ready

from .support import job_body

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
DATASET = "stories:500:540"
ROW_RE = re.compile(r'<tr class="cell" data-cell-id="([^"]+)" data-state="([^"]+)">(.*?)</tr>', re.S)
POINT_RE = re.compile(r'<circle class="point"[^>]*data-method="([^"]+)" data-target="([^"]+)" data-sparsity="[^"]+" '
                      r'data-ratio="([^"]+)"')


class Dashboard:
    """A user's signed-in dashboard and API clients, and the app's database."""

    def __init__(self, app: Any, name: str) -> None:
        self.app = app
        with app.state.db.session() as session:
            self.key = create_key(session, name)
        self.api = TestClient(app, headers={"Authorization": f"Bearer {self.key}"})
        self.ui = TestClient(app)
        token = CSRF_RE.search(self.ui.get("/ui/login").text)[1]
        signed = self.ui.post("/ui/login", data={"csrf": token, "api_key": self.key}, follow_redirects=False)
        assert signed.status_code == 303, signed.text

    def user(self, session: Any) -> User:
        user = user_for_key(session, self.key)
        assert user is not None
        return user

    def submit(self, body: dict[str, Any]) -> str:
        with self.app.state.db.session() as session:
            job = submit_job(session, self.app.state.broker, self.app.state.settings, self.user(session), body, None)
            return job.job.id

    def cells(self, parent_id: str) -> list[Job]:
        """The sweep's cells in its order (each model, each method, each sparsity)."""
        with self.app.state.db.session() as session:
            spec = session.get(Job, parent_id).spec
            cells = list(session.scalars(select(Job).where(Job.parent_id == parent_id)))
            return [cell for *_, cell in ordered(spec, cells)]

    def start(self, cell: Job, stage: str | None = None, percent: float = 0.0) -> lifecycle.Claim:
        with self.app.state.db.session() as session:
            got = lifecycle.claim(session, cell.id, "w:1", 60)
            assert got is not None
            if stage is not None:
                assert lifecycle.heartbeat(session, got, 60, stage, percent, {}) is False
        return got

    def finish(self, got: lifecycle.Claim, state: JobState, **values: Any) -> None:
        with self.app.state.db.session() as session:
            assert lifecycle.finish(session, got, state, **values)

    def page(self, path: str) -> str:
        response = self.ui.get(path)
        assert response.status_code == 200, response.text
        return response.text


def sweep_body(model: Path, text: Path, methods: list[str], sparsities: list[float], **extra: Any) -> dict[str, Any]:
    body = job_body(model, text, eval=[f"{text}:500:540"], calibration_windows=4)
    del body["sparsity"]
    body.update(kind="sweep", methods=methods, sparsities=sparsities, **extra)
    return body


def report(method: str, sparsity: float, ratio: float) -> dict[str, Any]:
    """A cell's report as run_sweep_cell returns it (what the pages and the comparison read): pruned perplexity
    `ratio` times the dense one on its one held-out set."""
    dense = {"perplexity": [{"dataset": DATASET, "perplexity": 5.0}], "throughput_tokens_per_s": None,
             "params": {"blocks": 100, "total": 120}, "eval_windows": {DATASET: 2}, "eval_cap": None}
    return {
        "method": method, "sparsity_target": sparsity, "sparsity_achieved": sparsity + 0.004,
        "perplexity": [{"dataset": DATASET, "domain": "in-domain", "dense": 5.0, "pruned": 5.0 * ratio}],
        "held_out": {"datasets": [DATASET], "ratio": ratio}, "timings": {"prune_s": 1.0},
        "params": {"blocks_before": 100, "blocks_after": 50}, "removed_blocks": [], "removed_attention": [0],
        "removed_mlp": [], "kept_ffn_neurons": 8,
        "sweep": {"dense": dense, "data": {"seq_len": 512}, "timings": {"load_s": 1.0, "total_s": 3.0},
                  "runtime": {"device": "cpu"}},
    }


def cell_rows(html: str) -> list[dict[str, Any]]:
    """The cells table's rows: the cell's id and state, its link, and its cells' text."""
    rows = []
    for cell_id, state, inner in ROW_RE.findall(html):
        cells = [re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", td))).strip()
                 for td in re.findall(r"<td[^>]*>(.*?)</td>", inner, re.S)]
        rows.append({"id": cell_id, "state": state, "href": re.search(r'<a href="([^"]+)"', inner)[1],
                     "cells": cells})
    return rows


def chart_points(html: str) -> set[tuple[str, float, float]]:
    return {(method, float(target), float(ratio)) for method, target, ratio in POINT_RE.findall(html)}


def comparison_points(dash: Dashboard, job_id: str) -> set[tuple[str, float, float]]:
    rows = dash.api.get(f"/jobs/{job_id}/comparison").json()["rows"]
    return {(r["method"], r["sparsity_target"], r["held_out"]["ratio"]) for r in rows if not r["error"]}


@pytest.fixture
def alice(app: Any) -> Dashboard:
    return Dashboard(app, "alice")


@pytest.fixture
def sweep(alice: Dashboard, stories_model: Path, stories_text: Path) -> dict[str, Any]:
    """A 2 x 3 sweep whose cells are: 2ssp 0.25 and 0.375 succeeded, 0.5 running; shortgpt 0.25 succeeded,
    0.375 failed, 0.5 queued."""
    parent_id = alice.submit(sweep_body(stories_model, stories_text, ["2ssp", "shortgpt"], [0.25, 0.375, 0.5]))
    cells = alice.cells(parent_id)
    assert [(c.method, c.sparsity) for c in cells] == [
        (m, s) for m in ("2ssp", "shortgpt") for s in (0.25, 0.375, 0.5)
    ]
    ratios = {0: 1.5, 1: 2.5, 3: 3.25}
    for i, ratio in ratios.items():
        alice.finish(alice.start(cells[i]), JobState.succeeded,
                     report=report(cells[i].method, cells[i].sparsity, ratio))
    alice.finish(alice.start(cells[4]), JobState.failed, error="InfeasibleTarget: no such target")
    running = alice.start(cells[2], "2ssp@0.5/evaluate_pruned", 42.0)
    return {"id": parent_id, "cells": cells, "running": running, "ratios": ratios}


def test_a_sweep_page_shows_its_cells_and_the_comparison_as_it_fills_in(
    alice: Dashboard, sweep: dict[str, Any]
) -> None:
    parent_id, cells = sweep["id"], sweep["cells"]
    html = alice.page(f"/ui/jobs/{parent_id}")
    rows = cell_rows(html)
    assert [r["id"] for r in rows] == [c.id for c in cells]
    assert [r["href"] for r in rows] == [f"/ui/jobs/{c.id}" for c in cells]
    assert [r["state"] for r in rows] == ["succeeded", "succeeded", "running", "succeeded", "failed", "queued"]
    assert [r["cells"][0] for r in rows] == ["2ssp-0.25", "2ssp-0.375", "2ssp-0.5", "shortgpt-0.25",
                                             "shortgpt-0.375", "shortgpt-0.5"]
    assert [r["cells"][3] for r in rows] == [r["state"] for r in rows]
    running = rows[2]["cells"]
    assert "2ssp@0.5/evaluate_pruned" in running[4] and "42.0%" in running[4]
    assert [r["cells"][5] for r in rows] == ["×1.500", "×2.500", "", "×3.250", "", ""]
    assert rows[4]["cells"][6] == "InfeasibleTarget: no such target"
    counts = re.sub(r"\s+", " ", unescape(re.search(r'id="cell-counts">(.*?)</span>', html, re.S)[1]))
    assert counts == "4/6 ended · 1 running · 1 queued · 3 succeeded · 1 failed"

    # the comparison so far: one point per succeeded cell, the rows GET /jobs/{id}/comparison answers
    assert 'class="charts partial-comparison"' in html
    points = chart_points(html)
    assert points == {("2ssp", 0.25, 1.5), ("2ssp", 0.375, 2.5), ("shortgpt", 0.25, 3.25)}
    assert points == comparison_points(alice, parent_id)
    assert re.findall(r'<polyline class="method-line" data-method="([^"]+)"', html) == ["2ssp"]  # 2 points
    assert "4 of 6 cells ended" in html

    # the status panel states the sweep's stage and percent as the API does, and the page polls the cells
    job = alice.api.get(f"/jobs/{parent_id}").json()
    assert job["stage"] == "cells: 4 of 6 ended, 1 running"
    assert re.search(r'id="job-stage">([^<]+)<', html)[1] == job["stage"]
    assert f'data-poll="/ui/jobs/{parent_id}/cells"' in html

    # the polled fragment follows the cells: the running cell ends, the queued one runs, a point appears
    alice.finish(sweep["running"], JobState.succeeded, report=report("2ssp", 0.5, 6.0))
    alice.start(cells[5], "influence", 10.0)
    fragment = alice.page(f"/ui/jobs/{parent_id}/cells")
    assert [r["state"] for r in cell_rows(fragment)] == ["succeeded"] * 4 + ["failed", "running"]
    assert chart_points(fragment) == comparison_points(alice, parent_id) == {
        ("2ssp", 0.25, 1.5), ("2ssp", 0.375, 2.5), ("2ssp", 0.5, 6.0), ("shortgpt", 0.25, 3.25)
    }
    assert "<html" not in fragment and "5 of 6 cells ended" in fragment
    live = alice.page(f"/ui/jobs/{parent_id}/live")
    assert "cells: 5 of 6 ended, 1 running" in live


def test_a_finished_sweep_shows_the_final_chart_from_its_artifact(
    alice: Dashboard, sweep: dict[str, Any]
) -> None:
    parent_id, cells = sweep["id"], sweep["cells"]
    alice.finish(sweep["running"], JobState.succeeded, report=report("2ssp", 0.5, 6.0))
    alice.finish(alice.start(cells[5]), JobState.cancelled, error=lifecycle.CANCELLED_BY_USER)
    app = alice.app
    assert write_comparison_if_ready(app.state.db, app.state.store, app.state.settings, parent_id, "w:2") == (
        "succeeded")
    html = alice.page(f"/ui/jobs/{parent_id}")
    assert 'id="job-state">succeeded<' in html
    assert f'src="/ui/jobs/{parent_id}/files/comparison.svg"' in html
    assert alice.ui.get(f"/ui/jobs/{parent_id}/files/comparison.svg").headers["content-type"] == "image/svg+xml"
    assert "partial-comparison" not in html and 'data-poll=""' in html  # no live chart, nothing polled
    assert [r["state"] for r in cell_rows(html)] == ["succeeded"] * 4 + ["failed", "cancelled"]
    assert cell_rows(html)[5]["cells"][6] == lifecycle.CANCELLED_BY_USER


def test_a_cell_page_links_to_its_sweep(alice: Dashboard, sweep: dict[str, Any], stories_model: Path,
                                        stories_text: Path) -> None:
    parent_id, cells = sweep["id"], sweep["cells"]
    for cell in (cells[0], cells[4], cells[5]):  # succeeded, failed, queued
        html = alice.page(f"/ui/jobs/{cell.id}")
        assert f'<a id="parent-sweep" href="/ui/jobs/{parent_id}">' in html
    succeeded = alice.page(f"/ui/jobs/{cells[0].id}")
    assert "Cell job" in succeeded and "chart-perplexity" in succeeded  # its run's report, as a prune job's
    assert 'data-value="7.5"' in succeeded  # pruned perplexity 5.0 x 1.5
    prune_id = alice.submit(job_body(stories_model, stories_text))
    assert "parent-sweep" not in alice.page(f"/ui/jobs/{prune_id}")
    # a cell's fragment is not a sweep's
    assert alice.ui.get(f"/ui/jobs/{cells[0].id}/cells").status_code == 409
    bob = Dashboard(alice.app, "bob")
    assert bob.ui.get(f"/ui/jobs/{parent_id}/cells").status_code == 404
    assert bob.ui.get(f"/ui/jobs/{cells[0].id}").status_code == 404


def test_the_jobs_list_shows_a_sweep_with_its_cells_count_not_the_cells(
    alice: Dashboard, sweep: dict[str, Any], stories_model: Path, stories_text: Path
) -> None:
    parent_id, cells = sweep["id"], sweep["cells"]
    prune_id = alice.submit(job_body(stories_model, stories_text))
    listed = re.compile(r'<tr class="job" data-job-id="([^"]+)" data-state="([^"]+)" data-kind="([^"]+)">(.*?)</tr>',
                        re.S)
    for path in ("/ui", "/ui/jobs/rows"):
        html = alice.page(path)
        rows = {job_id: (state, kind, inner) for job_id, state, kind, inner in listed.findall(html)}
        assert set(rows) == {parent_id, prune_id}, path
        assert rows[parent_id][:2] == ("running", "sweep") and rows[prune_id][:2] == ("queued", "prune")
        inner = rows[parent_id][2]
        assert f'<a class="cells-done" href="/ui/jobs/{parent_id}#cells"' in inner
        assert "4/6 cells done" in inner and "1 failed" in inner
        assert "cells: 4 of 6 ended, 1 running" in inner  # the sweep's stage, as the API states it
        assert not any(c.id[:8] in html for c in cells)
        assert "cells done" not in rows[prune_id][2]
    assert "2 jobs." in alice.page("/ui")
    # the state filter picks top-level jobs: the running sweep, not its running cell; no succeeded cell
    for path in ("/ui?state=running", "/ui/jobs/rows?state=running"):
        html = alice.page(path)
        assert [m[0] for m in listed.findall(html)] == [parent_id], path
    for path in ("/ui?state=succeeded", "/ui?state=failed", "/ui/jobs/rows?state=succeeded"):
        html = alice.page(path)
        assert listed.findall(html) == [] and not any(c.id[:8] in html for c in cells), path
    html = alice.page("/ui?state=queued")
    assert [m[0] for m in listed.findall(html)] == [prune_id]
    assert "1 job queued." in html


def test_a_sweep_over_several_models_has_a_chart_per_model(
    alice: Dashboard, stories_model: Path, stories_text: Path, test_data: Path
) -> None:
    other = test_data / "models" / "c4llama-8l"
    models = [str(stories_model), str(other)]
    parent_id = alice.submit(sweep_body(stories_model, stories_text, ["2ssp"], [0.25, 0.5], models=models))
    cells = alice.cells(parent_id)
    assert [(c.model, c.sparsity) for c in cells] == [(m, s) for m in models for s in (0.25, 0.5)]
    queued = alice.page(f"/ui/jobs/{parent_id}")
    assert 'id="no-points"' in queued and "chart-held-out" not in queued  # nothing to plot yet
    assert [r["state"] for r in cell_rows(queued)] == ["queued"] * 4
    for cell, ratio in zip(cells[:3], (1.25, 2.0, 1.75), strict=True):
        alice.finish(alice.start(cell), JobState.succeeded, report=report("2ssp", cell.sparsity, ratio))
    html = alice.page(f"/ui/jobs/{parent_id}")
    rows = cell_rows(html)
    assert [r["cells"][:2] for r in rows] == [
        ["stories260k/2ssp-0.25", "stories260k"], ["stories260k/2ssp-0.5", "stories260k"],
        ["c4llama-8l/2ssp-0.25", "c4llama-8l"], ["c4llama-8l/2ssp-0.5", "c4llama-8l"],
    ]
    charts = re.findall(r'<svg class="chart chart-held-out".*?</svg>', html, re.S)
    assert len(charts) == 2
    assert "Held-out summary on stories260k" in charts[0] and "Held-out summary on c4llama-8l" in charts[1]
    assert chart_points(charts[0]) == {("2ssp", 0.25, 1.25), ("2ssp", 0.5, 2.0)}
    assert chart_points(charts[1]) == {("2ssp", 0.25, 1.75)}
    app = alice.app
    alice.finish(alice.start(cells[3]), JobState.succeeded, report=report("2ssp", 0.5, 3.0))
    assert write_comparison_if_ready(app.state.db, app.state.store, app.state.settings, parent_id, "w:2") == (
        "succeeded")
    html = alice.page(f"/ui/jobs/{parent_id}")
    assert re.findall(r'<img src="/ui/jobs/[^/]+/files/([^"]+)"', html) == [
        "comparison-stories260k.svg", "comparison-c4llama-8l.svg"]
