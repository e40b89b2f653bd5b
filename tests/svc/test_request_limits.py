"""Absurd requests are refused before anything is queued: values of the wrong JSON type (strict types: "0.5" is no
sparsity), and jobs whose planned cost exceeds the deployment's limits; a user's queued and running jobs together
may plan only so much work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.db.session import Database
from service.keys import create_key
from service.settings import Settings

from .support import job_body


@pytest.fixture
def settings(tmp_path: Path, pg_url: str, redis_url: str, test_data: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=pg_url, broker_url=redis_url,
                    allowed_local_roots=[test_data])


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    db = Database(settings)
    with db.session() as session:
        key = create_key(session, "alice")
    db.dispose()
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as test_client:
        yield test_client


@pytest.fixture
def body(stories_model: Path, stories_text: Path) -> dict[str, Any]:
    return job_body(stories_model, stories_text)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sparsity": "0.5"}, "sparsity: Input should be a valid number"),
        ({"sparsity": True}, "sparsity: Input should be a valid number"),
        ({"seq_len": "512"}, "seq_len: Input should be a valid integer"),
        ({"seq_len": 512.5}, "seq_len: Input should be a valid integer"),
        ({"calibration_windows": True}, "calibration_windows: Input should be a valid integer"),
        ({"measure_throughput": "false"}, "measure_throughput: Input should be a valid boolean"),
        ({"heal": {"steps": "3"}}, "heal.steps: Input should be a valid integer"),
        ({"heal": {"lr": "0.001"}}, "heal.lr: Input should be a valid number"),
        ({"options": {"alpha": "1.5"}}, "options for 2ssp: alpha: Input should be a valid number"),
        ({"export": "gguf", "export_options": {"type": 8}}, "export options for gguf: type"),
    ],
)
def test_values_must_have_their_json_type(
    client: TestClient, body: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    response = client.post("/jobs", json={**body, **change})
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert client.get("/jobs").json()["total"] == 0


def test_the_same_values_as_json_numbers_are_accepted(client: TestClient, body: dict[str, Any]) -> None:
    request = {**body, "sparsity": 0.5, "seq_len": 512, "measure_throughput": False, "options": {"alpha": 1.5},
               "heal": {"steps": 3, "lr": 0.001, "betas": [0.9, 0.95]}}
    response = client.post("/jobs", json=request)
    assert response.status_code == 202, response.text
    spec = response.json()["spec"]
    assert spec["sparsity"] == 0.5 and spec["options"]["alpha"] == 1.5 and spec["heal"]["steps"] == 3


def plan_of(stories_text: Path, evaluations: int, heal_tokens: int = 0, passes: int = 4) -> int:
    """job_body's plan: 8 calibration windows of 512 tokens, the eval range bounded by its file's bytes."""
    return 8 * 512 + evaluations * stories_text.stat().st_size + heal_tokens * passes


@pytest.mark.parametrize(
    ("change", "figure", "limit"),
    [
        ({"heal": {"steps": 10_000_000}}, lambda text: plan_of(text, 3, 10_000_000 * 8 * 512), "TWOSSP_MAX_JOB_TOKENS"),
        ({"heal": {"tokens": 10**13, "loss": "lm"}},
         lambda text: plan_of(text, 3, -(-10**13 // (8 * 512)) * 8 * 512, passes=3), "TWOSSP_MAX_JOB_TOKENS"),
        ({"eval_windows": 100_000, "eval": ["wikitext2", "wikitext2"]}, lambda text: 8 * 512 + 2 * 2 * 100_000 * 512,
         "TWOSSP_MAX_JOB_TOKENS"),
    ],
)
def test_a_job_planning_more_work_than_the_limit_is_refused_with_both_figures(
    client: TestClient, body: dict[str, Any], stories_text: Path, change: dict[str, Any], figure: Any, limit: str
) -> None:
    response = client.post("/jobs", json={**body, **change})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert f"{figure(stories_text):,} tokens" in detail and f"{limit}=40,000,000" in detail, detail
    assert client.get("/jobs").json()["total"] == 0


@pytest.mark.slow
def test_a_sweep_beyond_the_runs_limit_and_an_unbounded_evaluation_are_refused(
    client: TestClient, body: dict[str, Any]
) -> None:
    sweep = {**body, "kind": "sweep", "methods": ["2ssp", "shortgpt", "window", "blockpruner", "slicegpt", "evopress",
                                                  "2ssp-refit"],
             "sparsities": [round(0.01 * i, 2) for i in range(1, 65)]}
    sweep.pop("sparsity")
    response = client.post("/jobs", json=sweep)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "448 runs (7 methods x 64 sparsities)" in detail and "TWOSSP_MAX_SWEEP_RUNS=32" in detail, detail

    response = client.post("/jobs", json={**body, "eval": ["c4"]})  # a hub dataset of unknown size, in full
    assert response.status_code == 422 and "eval_windows" in response.json()["detail"], response.text
    response = client.post("/jobs", json={**body, "eval": ["c4"], "eval_windows": 4})
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["eval_windows"] == 4


def test_the_quota_counts_the_planned_work_of_queued_and_running_jobs(
    settings: Settings, body: dict[str, Any], stories_text: Path
) -> None:
    one = plan_of(stories_text, 2)  # job_body without a heal: the dense and the pruned model evaluated
    quota = Settings(**{**settings.model_dump(), "max_job_tokens": one, "max_active_tokens_per_user": 2 * one + 10})
    db = Database(quota)
    with db.session() as session:
        key = create_key(session, "bob")
    db.dispose()
    with TestClient(create_app(quota), headers={"Authorization": f"Bearer {key}"}) as bob:
        first = bob.post("/jobs", json={**body, "seed": 1})
        assert first.status_code == 202 and bob.post("/jobs", json={**body, "seed": 2}).status_code == 202
        third = bob.post("/jobs", json={**body, "seed": 3})
        assert third.status_code == 429 and int(third.headers["Retry-After"]) >= 1
        detail = third.json()["detail"]
        assert f"plan {2 * one:,} tokens" in detail and f"this one {one:,}" in detail, detail
        assert f"TWOSSP_MAX_ACTIVE_TOKENS_PER_USER={2 * one + 10:,}" in detail
        assert bob.post(f"/jobs/{first.json()['id']}/cancel").status_code == 202  # a finished job counts no more
        assert bob.post("/jobs", json={**body, "seed": 3}).status_code == 202
        assert bob.get("/jobs").json()["total"] == 3


def test_a_sweeps_cells_count_against_the_active_jobs_the_quota_and_the_rate_limit(
    settings: Settings, body: dict[str, Any], stories_text: Path
) -> None:
    """A sweep is as many jobs as it has cells: the cap on active jobs counts them (a sweep larger than the cap is a
    422: it could never be queued), the token quota counts each cell's plan, and the rate limit each cell."""
    limited = Settings(**{**settings.model_dump(), "max_active_jobs_per_user": 5, "rate_limit_burst": 12,
                          "rate_limit_per_s": 0.001})
    db = Database(limited)
    with db.session() as session:
        key = create_key(session, "dave")
    sweep = {**body, "kind": "sweep", "methods": ["2ssp", "shortgpt"], "sparsities": [0.25, 0.5]}
    sweep.pop("sparsity")
    with TestClient(create_app(limited), headers={"Authorization": f"Bearer {key}"}) as dave:
        big = dave.post("/jobs", json={**sweep, "sparsities": [0.25, 0.375, 0.5]})  # 6 cells of the 12 requests
        assert big.status_code == 422 and "6 cells" in big.json()["detail"], big.text
        assert "TWOSSP_MAX_ACTIVE_JOBS_PER_USER" in big.json()["detail"]
        first = dave.post("/jobs", json=sweep)  # 4 cells: 2 requests left
        assert first.status_code == 202 and first.json()["cells"]["total"] == 4, first.text
        assert dave.post("/jobs", json={**body, "seed": 1}).status_code == 202  # 5 active jobs: the cap
        capped = dave.post("/jobs", json={**body, "seed": 2})
        assert capped.status_code == 429 and "you have 5 jobs" in capped.json()["detail"], capped.text
        # the budget is spent: a sweep counts each of its cells
        assert dave.post(f"/jobs/{first.json()['id']}/cancel").status_code == 429
    with TestClient(create_app(limited), headers={"Authorization": f"Bearer {key}"}) as again:
        limited_sweep = again.post("/jobs", json={**sweep, "seed": 3})
        assert limited_sweep.status_code == 429, limited_sweep.text
    with db.session() as session:
        from sqlalchemy import select

        from service.db.models import Job

        parent = session.scalar(select(Job).where(Job.kind == "sweep"))
        cells = list(session.scalars(select(Job).where(Job.parent_id == parent.id)))
        # each cell plans its own work (its dense evaluation included); the sweep's figure is their sum
        assert len(cells) == 4 and all(c.planned_tokens == plan_of(stories_text, 2) for c in cells)
        assert parent.planned_tokens == sum(c.planned_tokens for c in cells)
    db.dispose()
