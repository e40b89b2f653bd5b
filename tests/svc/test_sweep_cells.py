"""A sweep through the distributed service, all real processes: the API, two Celery workers on Redis, the reaper,
Postgres. The sweep is a parent job whose cells run on both workers; its comparison equals the one-process
`run_sweep`'s for the same request (everything but timings); a cell that fails is a row with its error; cancel of the
sweep cancels its queued and running cells."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from api.client import download_artifact
from service.settings import Settings

from .procs import Api, Proc, create_key, start_api, start_reaper, start_worker, wait_until
from .support import job_body

pytestmark = pytest.mark.slow
TIMING_KEYS = {"prune_s", "heal_s", "throughput_tokens_per_s", "speedup", "throughput_unreliable"}
RUN_TIMING_KEYS = {"timings", "throughput_tokens_per_s", "throughput_spread", "throughput_unreliable", "runtime"}


@dataclass
class Stack:
    settings: Settings
    base: str
    alice: Api
    workers: list[Proc]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_factory: Callable[[], str],
    redis_server: str,
    test_data: Path,
    slow_model: Path,
) -> Iterator[Stack]:
    redis.Redis.from_url(redis_server).flushdb()
    root = tmp_path_factory.mktemp("sweep-cells")
    logs = root / "logs"
    logs.mkdir()
    settings = Settings(
        data_dir=root / "data",
        database_url=pg_factory(),
        broker_url=redis_server,
        allowed_local_roots=[test_data, slow_model.parent],
        lease_seconds=10,
        reaper_interval_s=0.5,
        dispatch_grace_s=1,
        cancel_grace_s=5,
        torch_threads=1,
    )
    api, base = start_api(settings, logs)
    reaper = start_reaper(settings, logs)
    workers = [start_worker(settings, logs), start_worker(settings, logs)]
    yield Stack(settings, base, Api(base, create_key(settings, "alice")), workers)
    for proc in [*workers, reaper, api]:
        proc.stop()


def sweep_body(model: Path, text: Path, **overrides: Any) -> dict[str, Any]:
    body = job_body(model, text, eval=[f"{text}:500:540"], calibration_windows=4)
    del body["sparsity"]
    body.update(kind="sweep", **overrides)
    return body


def without(row: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in keys}


def cells_on(worker: Proc, cell_ids: set[str]) -> set[str]:
    """The cells whose message this Celery worker received (the task id is the job id)."""
    return set(re.findall(r"twossp\.run_job\[([0-9a-f-]{36})\] received", worker.output())) & cell_ids


def test_a_sweep_runs_its_cells_on_two_workers_and_compares_like_run_sweep(
    stack: Stack, stories_model: Path, stories_text: Path, tmp_path: Path
) -> None:
    body = sweep_body(stories_model, stories_text, methods=["2ssp", "shortgpt"], sparsities=[0.05, 0.5])
    submitted = stack.alice.submit(body)
    assert submitted.status_code == 202, submitted.text
    sweep = submitted.json()
    assert sweep["kind"] == "sweep" and sweep["cells"]["total"] == 4 and sweep["cells"]["queued"] == 4
    cell_ids = {c["id"] for c in sweep["cells"]["items"]}

    # while the cells run: the sweep is running, its progress follows them, a partial comparison can be read
    partial: list[dict[str, Any]] = []
    progress: list[float] = []

    def ended() -> dict[str, Any] | None:
        job = stack.alice.job(sweep["id"])
        progress.append(job["progress"])
        comparison = stack.alice.http.get(f"/jobs/{sweep['id']}/comparison").json()
        if not comparison["complete"] and comparison["rows"]:
            partial.append(comparison)
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    job = wait_until(ended, timeout=300, what="the sweep to end", interval=0.3)
    assert job["state"] == "succeeded", job
    assert job["progress"] == 100 and job["cells"]["succeeded"] == 3 and job["cells"]["failed"] == 1
    assert progress == sorted(progress), progress

    # the cells ran on both workers, each cell once
    ran = [cells_on(worker, cell_ids) for worker in stack.workers]
    assert all(ran) and ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == cell_ids, ran
    for cell in job["cells"]["items"]:
        started = [e for e in stack.alice.events(cell["id"], limit=50) if e["kind"] == "started"]
        assert len(started) == 1, started

    # the comparison equals the one-process sweep's rows for the same request (timings aside); the cell that could
    # not reach its target is a row with its error in both
    from twossp_core.plan.spec import parse_sweep_spec
    from twossp_core.sweep import run_sweep

    single = run_sweep(parse_sweep_spec(job["spec"]), tmp_path / "single")
    rows = job["report"]["rows"]
    assert [without(r, TIMING_KEYS) for r in rows] == [without(r, TIMING_KEYS) for r in single["rows"]]
    failed = [r for r in rows if r["error"] is not None]
    assert [(r["method"], r["sparsity_target"]) for r in failed] == [("shortgpt", 0.05)]
    assert failed[0]["error"].startswith("InfeasibleTarget")
    assert job["report"]["dense"]["perplexity"] == single["dense"]["perplexity"]
    assert job["report"]["dense"]["params"] == single["dense"]["params"]

    # a partial comparison was readable before the end: the rows of the cells that had ended, in the sweep's order
    assert partial, "no partial comparison seen"
    for snapshot in partial:
        assert 0 < len(snapshot["rows"]) < 4
        keys = [(r["method"], r["sparsity_target"]) for r in snapshot["rows"]]
        assert keys == [k for k in [(r["method"], r["sparsity_target"]) for r in rows] if k in keys]
    final = stack.alice.http.get(f"/jobs/{sweep['id']}/comparison").json()
    assert final["complete"] and final["rows"] == rows
    markdown = stack.alice.http.get(f"/jobs/{sweep['id']}/comparison?format=markdown")
    assert markdown.headers["content-type"].startswith("text/markdown") and "| shortgpt |" in markdown.text

    # the artifact: the comparison files, sweep.json and every succeeded run's report as run_sweep writes them
    out = download_artifact(stack.base, stack.alice.key, sweep["id"], tmp_path / "download")
    assert json.loads((out / "comparison.json").read_text()) == rows
    assert (out / "comparison.png").read_bytes().startswith(b"\x89PNG")
    reports = sorted(p.relative_to(out).as_posix() for p in out.glob("runs/*/report.json"))
    assert reports == ["runs/2ssp-0.05/report.json", "runs/2ssp-0.5/report.json", "runs/shortgpt-0.5/report.json"]
    for name in reports:
        ours, theirs = (json.loads((root / name).read_text()) for root in (out, tmp_path / "single"))
        assert without(ours, RUN_TIMING_KEYS) == without(theirs, RUN_TIMING_KEYS), name
    summary = json.loads((out / "sweep.json").read_text())
    assert {c["id"] for c in summary["cells"]} == cell_ids and summary["dense"] == job["report"]["dense"]
    assert {"load", "evaluate_dense", "shortgpt@0.5/evaluate_pruned", "comparison"} <= set(job["stage_timings"])
    # stage 1 ran in the 2SSP cell that computed the scores; the other read them
    assert {"2ssp@0.05/stage1", "2ssp@0.5/stage1"} & set(job["stage_timings"])

    # the sweep's history: submitted, started with its first cell, one cell_ended per cell, the comparison, succeeded
    kinds = [e["kind"] for e in stack.alice.events(sweep["id"], limit=50)]
    assert kinds[0] == "submitted" and kinds[1] == "started" and kinds[-1] == "succeeded"
    assert kinds.count("cell_ended") == 4 and kinds.count("started") == 2

    # the dense work ran once: one dense artifact, computed by at most one cell (none of the succeeded ones when the
    # cell that failed at pruning computed it) and read by the others; 2SSP's scores computed by one of its two cells
    # and read by the other, whichever worker ran each
    shared = {entry["kind"]: entry for entry in summary["shared"]}
    assert len([e for e in summary["shared"] if e["kind"] == "dense"]) == 1
    assert len(shared["dense"]["reused_by"]) >= 2 and shared["dense"]["artifact"].startswith("shared/")
    scores = shared["2ssp.neuron_scores"]
    assert scores["computed_by"] is not None and len(scores["reused_by"]) == 1, scores
    assert shared["depth.last_token_states"]["computed_by"] == "shortgpt-0.5"

    # a second sweep on the same model and data reads all of it: nothing dense is computed, the rows are the same
    again = stack.alice.submit(body)
    assert again.status_code == 202, again.text
    second = stack.alice.wait_done(again.json()["id"], timeout=300)
    assert second["state"] == "succeeded", second
    assert [without(r, TIMING_KEYS) for r in second["report"]["rows"]] == [without(r, TIMING_KEYS) for r in rows]
    assert second["report"]["dense"] == job["report"]["dense"]
    reread = {entry["kind"]: entry for entry in second["report"]["shared"]}
    assert set(reread) == set(shared) and all(e["computed_by"] is None for e in reread.values()), reread
    assert reread["dense"]["artifact"] == shared["dense"]["artifact"] and len(reread["dense"]["reused_by"]) == 3
    for cell in second["cells"]["items"]:
        if cell["state"] == "succeeded":
            notes = [u["note"] for u in stack.alice.job(cell["id"])["report"]["sweep"]["shared"]]
            assert notes and all(n.startswith("reused from shared/") for n in notes), notes


def test_cancel_of_a_sweep_cancels_its_queued_and_running_cells(
    stack: Stack, slow_model: Path, stories_text: Path
) -> None:
    body = sweep_body(slow_model, stories_text, methods=["2ssp"], sparsities=[0.25, 0.375, 0.5, 0.625],
                      calibration_windows=12)
    submitted = stack.alice.submit(body)
    assert submitted.status_code == 202, submitted.text
    sweep_id = submitted.json()["id"]

    def two_running() -> dict[str, Any] | None:
        job = stack.alice.job(sweep_id)
        return job if job["cells"]["running"] == 2 and job["state"] == "running" else None

    running = wait_until(two_running, timeout=120, what="two cells running")
    assert running["cells"]["queued"] == 2
    was_running = {c["id"] for c in running["cells"]["items"] if c["state"] == "running"}
    answer = stack.alice.cancel(sweep_id)
    assert answer.status_code == 202, answer.text
    after = answer.json()
    assert after["cancel_requested"] and after["cells"]["queued"] == 0
    assert after["cells"]["cancelled"] >= 2  # the queued ones at once

    job = stack.alice.wait_done(sweep_id, timeout=60)
    assert job["state"] == "cancelled" and job["error"] == "cancelled by user", job
    assert job["cells"]["cancelled"] == 4, job["cells"]
    for cell in job["cells"]["items"]:
        kinds = [e["kind"] for e in stack.alice.events(cell["id"], limit=50)]
        assert kinds[-1] == "cancelled", kinds
        # the cells that were queued never started; the running ones were stopped, not run to the end
        assert ("started" in kinds) == (cell["id"] in was_running), kinds
        assert "succeeded" not in kinds
    kinds = [e["kind"] for e in stack.alice.events(sweep_id, limit=50)]
    assert kinds[-1] == "cancelled" and "cancel_requested" in kinds and kinds.count("cell_ended") == 4
    # nothing is left for the workers: a new job runs at once
    assert stack.alice.http.get(f"/jobs/{sweep_id}/comparison").json()["rows"][0]["error"] == "cancelled by user"


def test_a_sweep_over_two_models_has_a_model_column_and_one_plot_per_model(
    stack: Stack, stories_model: Path, slow_model: Path, stories_text: Path, tmp_path: Path
) -> None:
    models = [str(stories_model), str(slow_model)]
    body = sweep_body(stories_model, stories_text, methods=["shortgpt"], sparsities=[0.5], models=models)
    del body["model"]  # the first of models
    submitted = stack.alice.submit(body)
    assert submitted.status_code == 202, submitted.text
    sweep = submitted.json()
    assert sweep["spec"]["models"] == models and sweep["model"] == models[0]
    assert [c["model"] for c in sweep["cells"]["items"]] == models
    assert [c["name"] for c in sweep["cells"]["items"]] == ["stories260k/shortgpt-0.5", "slow-llama/shortgpt-0.5"]
    job = stack.alice.wait_done(sweep["id"], timeout=300)
    assert job["state"] == "succeeded", job
    rows = job["report"]["rows"]
    assert [r["model"] for r in rows] == models and all(r["error"] is None for r in rows)
    assert set(job["report"]["dense_by_model"]) == set(models)

    # each model's rows are the one-process sweep's of that model
    from twossp_core.plan.spec import parse_sweep_spec
    from twossp_core.sweep import run_sweep

    for model, row in zip(models, rows, strict=True):
        single_spec = {k: v for k, v in job["spec"].items() if k != "models"}
        single = run_sweep(parse_sweep_spec({**single_spec, "model": model}), tmp_path / Path(model).name)
        assert without({k: v for k, v in row.items() if k != "model"}, TIMING_KEYS) == without(
            single["rows"][0], TIMING_KEYS)
        assert job["report"]["dense_by_model"][model]["perplexity"] == single["dense"]["perplexity"]

    out = download_artifact(stack.base, stack.alice.key, sweep["id"], tmp_path / "download")
    assert json.loads((out / "comparison.json").read_text()) == rows
    for label in ("stories260k", "slow-llama"):
        assert (out / f"comparison-{label}.png").read_bytes().startswith(b"\x89PNG")
        assert (out / "runs" / label / "shortgpt-0.5" / "report.json").is_file()
    markdown = (out / "comparison.md").read_text()
    assert f"Comparison on {models[0]}" in markdown and f"Comparison on {models[1]}" in markdown
    shown = stack.alice.http.get(f"/jobs/{sweep['id']}/comparison").json()
    assert shown["complete"] and shown["rows"] == rows and shown["dense"] is None
