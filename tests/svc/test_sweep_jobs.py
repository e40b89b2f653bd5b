"""Sweep jobs: `POST /jobs` with `"kind": "sweep"` runs methods x sparsities on one model and reports the
comparison; bad sweeps are rejected up front exactly like bad prune jobs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from api.client import download_artifact
from service.db.models import Job
from service.db.session import Database
from service.keys import create_key
from service.settings import Settings

from .checks import assert_torch_not_loaded
from .procs import Embedded, bare_env
from .support import job_body

COMPARISON_FILES = {"comparison.json", "comparison.md", "comparison.png", "comparison.svg", "sweep.json"}


def sweep_body(model: Path, text: Path, **overrides: object) -> dict[str, Any]:
    body = job_body(model, text, eval=[f"{text}:500:540"], calibration_windows=4)
    del body["sparsity"]
    body.update(kind="sweep", methods=["2ssp", "shortgpt"], sparsities=[0.25, 0.5])
    body.update(overrides)
    return body


@pytest.fixture
def api_settings(tmp_path: Path, pg_url: str, redis_url: str, test_data: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=pg_url, broker_url=redis_url,
                    allowed_local_roots=[test_data])


@pytest.fixture
def alice(api_settings: Settings) -> Iterator[TestClient]:
    db = Database(api_settings)
    with db.session() as session:
        key = create_key(session, "alice")
    db.dispose()
    with TestClient(create_app(api_settings), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


def job_rows(settings: Settings) -> list[Job]:
    db = Database(settings)
    with db.session() as session:
        rows = list(session.scalars(select(Job)))
        assert session.scalar(select(func.count()).select_from(Job)) == len(rows)
    db.dispose()
    return rows


def test_sweep_requests_are_validated_and_queued_like_prune_jobs(
    alice: TestClient, api_settings: Settings, stories_model: Path, stories_text: Path
) -> None:
    body = sweep_body(stories_model, stories_text)
    first = alice.post("/jobs", json=body, headers={"Idempotency-Key": "sweep-1"})
    assert first.status_code == 202, first.text
    job = first.json()
    assert job["kind"] == "sweep" and job["state"] == "queued"
    assert job["method"] is None and job["sparsity"] is None
    assert job["spec"]["methods"] == ["2ssp", "shortgpt"] and job["spec"]["sparsities"] == [0.25, 0.5]
    # the comma-separated methods and the sparsities in another order normalize to the same request: a replay
    same = {**body, "methods": "2ssp, shortgpt,2ssp", "sparsities": [0.5, 0.25]}
    replay = alice.post("/jobs", json=same, headers={"Idempotency-Key": "sweep-1"})
    assert replay.status_code == 200 and replay.json()["id"] == job["id"], replay.text

    text = stories_text
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("unknown method", {**body, "methods": ["2ssp", "magic"]}, "unknown method 'magic'"),
        ("sparsity 1", {**body, "sparsities": [0.25, 1.0]}, "strictly between 0 and 1"),
        ("sparsity 0", {**body, "sparsities": [0]}, "strictly between 0 and 1"),
        ("negative sparsity", {**body, "sparsities": [-0.1, 0.5]}, "strictly between 0 and 1"),
        ("sparsities as text", {**body, "sparsities": "0.25,0.5"}, "JSON array of numbers"),
        ("a sparsity as text", {**body, "sparsities": [0.25, "0.5"]}, "sparsities.1: Input should be a valid number"),
        ("not a number", {**body, "sparsities": ["half"]}, "sparsities"),
        ("no methods", {**body, "methods": []}, "methods"),
        ("blank methods", {**body, "methods": " , "}, "methods"),
        ("no sparsities", {**body, "sparsities": []}, "sparsities"),
        ("missing sparsities", {k: v for k, v in body.items() if k != "sparsities"}, "sparsities"),
        ("unknown kind", {**body, "kind": "sweeps"}, "kind"),
        ("kind not a string", {**body, "kind": ["sweep"]}, "kind"),
        ("prune field in a sweep", {**body, "sparsity": 0.5}, "sparsity"),
        ("sweep field in a prune job", {**job_body(stories_model, text), "methods": ["2ssp"]}, '"kind": "sweep"'),
        ("options for a method not swept", {**body, "options": {"slicegpt": {}}}, "slicegpt"),
        ("unknown option", {**body, "options": {"shortgpt": {"nope": 1}}}, "nope"),
        ("infeasible cell", {**body, "options": {"2ssp": {"num_attention_to_prune": 99}}}, "2ssp at sparsity 0.25"),
        ("outside roots", {**body, "model": "/etc"}, "TWOSSP_ALLOWED_LOCAL_ROOTS"),
        ("data missing", {**body, "eval": [f"{text}.missing:0:10"]}, "no such file"),
    ]
    for name, request, reason in bad:
        response = alice.post("/jobs", json=request)
        assert response.status_code == 422, (name, response.status_code, response.text)
        assert reason in response.json()["detail"], (name, response.json())

    # the sweep is a parent and one cell job per method and sparsity, each published to the broker
    rows = job_rows(api_settings)
    [parent] = [r for r in rows if r.kind == "sweep"]
    cells = [r for r in rows if r.kind == "cell"]
    assert len(rows) == 5 and parent.id == job["id"] and parent.dispatched_at is None
    assert {(c.method, c.sparsity) for c in cells} == {(m, s) for m in ("2ssp", "shortgpt") for s in (0.25, 0.5)}
    assert all(c.parent_id == parent.id and c.dispatched and c.state == "queued" for c in cells)
    assert all(c.spec["method"] == c.method and c.spec["sparsity"] == c.sparsity for c in cells)
    assert job["cells"]["total"] == 4 and job["cells"]["queued"] == 4
    # cells are listed with their sweep's id (or kind=cell), not among the user's jobs
    assert alice.get("/jobs").json()["total"] == 1
    listed = alice.get(f"/jobs?parent_id={job['id']}").json()
    assert listed["total"] == 4 and {c["parent_id"] for c in listed["items"]} == {job["id"]}
    assert alice.get("/jobs?kind=cell").json()["total"] == 4
    assert alice.get("/jobs?kind=sweep").json()["total"] == 1
    assert alice.get("/jobs?kind=prune").json()["total"] == 0
    prune = alice.post("/jobs", json=job_body(stories_model, text)).json()
    assert prune["kind"] == "prune" and prune["method"] == "2ssp" and prune["sparsity"] == 0.375
    assert [j["id"] for j in alice.get("/jobs?kind=prune").json()["items"]] == [prune["id"]]

    schema = alice.get("/openapi.json").json()["paths"]["/jobs"]["post"]["requestBody"]["content"]
    variants = {s["title"]: s for s in schema["application/json"]["schema"]["oneOf"]}
    sweep = variants["SweepJobRequest"]
    assert {"kind", "model", "sparsities"} <= set(sweep["required"]) and "methods" in sweep["properties"]
    assert sweep["properties"]["kind"]["const"] == "sweep" and "sparsity" not in sweep["properties"]
    assert variants["PruneJobRequest"]["properties"]["kind"]["default"] == "prune"


@pytest.mark.slow
def test_sweep_job_runs_on_the_embedded_default(
    tmp_path: Path, test_data: Path, stories_model: Path, stories_text: Path
) -> None:
    server = Embedded(tmp_path, bare_env([test_data]))
    try:
        response = server.api.submit(sweep_body(stories_model, stories_text))
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        job = server.api.wait_done(job_id, timeout=240)  # four cells, each loading and measuring the model
        assert_torch_not_loaded(server.proc.pid)
        manifest = server.api.http.get(f"/jobs/{job_id}/manifest").json()
        model_dir = download_artifact(server.base, server.key, job_id, tmp_path / "download")
        cells = [server.api.job(cell["id"]) for cell in job["cells"]["items"]]
    finally:
        server.proc.stop()

    assert job["state"] == "succeeded", (job, server.proc.output()[-3000:])
    assert job["kind"] == "sweep" and job["progress"] == 100 and job["error"] is None
    report = job["report"]
    rows = report["rows"]
    assert {(r["method"], r["sparsity_target"]) for r in rows} == {
        (m, s) for m in ("2ssp", "shortgpt") for s in (0.25, 0.5)
    }
    for row in rows:
        assert row["error"] is None, row
        assert 0 < row["sparsity_achieved"] < 1 and row["prune_s"] >= 0
        [ppl] = row["perplexity"]
        assert ppl["dataset"].endswith("tinystories-val-1000.txt:500:540")
        assert ppl["pruned"] > ppl["dense"] > 1
    assert report["dense"]["perplexity"][0]["perplexity"] == pytest.approx(rows[0]["perplexity"][0]["dense"])
    assert {"load", "evaluate_dense", "2ssp@0.25/stage1", "shortgpt@0.5/evaluate_pruned", "comparison", "upload"} <= (
        set(job["stage_timings"])
    )

    # the artifact: the comparison (json, md, png, svg), the sweep summary and every run's report, verified
    paths = {f["path"] for f in manifest["files"]}
    run_reports = {f"runs/{m}-{s:g}/report.json" for m in ("2ssp", "shortgpt") for s in (0.25, 0.5)}
    assert paths == COMPARISON_FILES | run_reports
    assert job["artifact"]["files"] == len(paths)
    assert json.loads((model_dir / "comparison.json").read_text()) == rows
    assert (model_dir / "comparison.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    markdown = (model_dir / "comparison.md").read_text()
    assert "| 2ssp |" in markdown and "| shortgpt |" in markdown
    run = json.loads((model_dir / "runs" / "shortgpt-0.5" / "report.json").read_text())
    assert run["method"] == "shortgpt" and run["perplexity"] == next(
        r["perplexity"] for r in rows if r["method"] == "shortgpt" and r["sparsity_target"] == 0.5
    )

    # the in-process worker ran the sweep's cells one after another, with the one-process sweep's results
    assert len(cells) == 4 and all(c["state"] == "succeeded" and c["parent_id"] == job_id for c in cells)
    spans = sorted((c["started_at"], c["finished_at"]) for c in cells)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False)), spans
    from twossp_core.plan.spec import parse_sweep_spec
    from twossp_core.sweep import run_sweep

    timings = {"prune_s", "heal_s", "throughput_tokens_per_s", "speedup", "throughput_unreliable"}
    single = run_sweep(parse_sweep_spec(job["spec"]), tmp_path / "single")["rows"]
    assert [{k: v for k, v in r.items() if k not in timings} for r in rows] == [
        {k: v for k, v in r.items() if k not in timings} for r in single
    ]


def test_sweep_progress_advances_run_by_run() -> None:
    from twossp_core.plan.spec import parse_job_spec
    from worker.progress import ProgressTracker, job_stages

    spec = {"model": "org/model", "methods": ["2ssp", "shortgpt"], "sparsities": [0.25, 0.5]}
    tracker = ProgressTracker(job_stages(parse_job_spec("sweep", spec)))
    runs = ["2ssp@0.25", "2ssp@0.5", "shortgpt@0.25", "shortgpt@0.5"]
    stages = ["load", "calibration", "evaluate_dense"]
    stages += [f"{run}/{sub}" for run in runs[:2] for sub in ("stage1", "stage2", "evaluate_pruned")]
    stages += [f"{run}/{sub}" for run in runs[2:] for sub in ("influence", "evaluate_pruned")]
    seen = []
    for stage in [*stages, "comparison", "upload"]:
        for fraction in (0.0, 0.5, 1.0):
            tracker.update(stage, fraction)
            seen.append(tracker.snapshot()[1])
    assert seen == sorted(seen) and seen[-1] == 100.0
    # every stage moves the percent: within it (0 -> 0.5 -> 1) and across the runs
    assert all(a < b for a, b in zip(seen[1::3], seen[2::3], strict=True)), seen
    ends = seen[2::3]
    assert ends == sorted(set(ends))
    # a run's share is its method's weight: 2SSP's two stages weigh what ShortGPT's one does
    run_end = {run: ends[stages.index(f"{run}/evaluate_pruned")] for run in runs}
    twossp_run = run_end["2ssp@0.5"] - run_end["2ssp@0.25"]
    assert twossp_run == pytest.approx(run_end["shortgpt@0.5"] - run_end["shortgpt@0.25"])
