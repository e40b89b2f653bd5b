"""Shared dense work with the artifact store on S3 (moto's server on loopback): a sweep's cells, in one process as
tests/svc/test_shared_dense_work.py runs them and on two real Celery workers, compute the dense measurements and
statistics once, store them under `shared/<key>` in the bucket and read them back ("reused from shared/<key>"); every
report equals the local-store run's. The reaper process deletes the artifacts once unused past
`TWOSSP_SHARED_ARTIFACT_TTL_DAYS`, and the next sweep computes them again with the same results."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from sqlalchemy import select

from service.db.migrate import upgrade_head
from service.db.models import SharedArtifact
from service.db.session import Database
from service.settings import Settings
from service.store import make_store
from service.store.local import LocalStore
from twossp_core.plan.spec import SweepSpec, parse_sweep_spec
from twossp_core.sweep import run_sweep_cell
from worker.shared import StoreArtifactCache

from .procs import Api, Proc, create_key, start_api, start_reaper, start_worker, wait_until
from .support import job_body, s3_settings

pytestmark = pytest.mark.slow
RUN_TIMING_KEYS = {"timings", "throughput_tokens_per_s", "throughput_spread", "throughput_unreliable", "runtime"}
METHODS, SPARSITIES = ["2ssp", "shortgpt"], [0.05, 0.375]


def without(report: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in keys}


def sweep_body(model: Path, text: Path) -> dict[str, Any]:
    """The sweep as the API takes it (`kind: sweep`); `spec_of` gives it as twossp_core reads it."""
    body = job_body(model, text, eval=[f"{text}:500:540"], calibration_windows=4)
    del body["sparsity"]
    body.update(kind="sweep", methods=METHODS, sparsities=SPARSITIES)
    return body


def spec_of(body: dict[str, Any]) -> SweepSpec:
    return parse_sweep_spec({k: v for k, v in body.items() if k != "kind"})


def run_cells(spec: SweepSpec, out: Path, cache: StoreArtifactCache) -> dict[str, dict[str, Any]]:
    """Every cell of the sweep in this process, in the sweep's order, as a worker runs each (shortgpt at 0.05 is
    below one block: it fails as its cell would)."""
    done = {}
    for method in spec.methods:
        for sparsity in spec.sparsities:
            try:
                done[f"{method}-{sparsity:g}"] = run_sweep_cell(spec.prune_spec(method, sparsity), out, shared=cache)
            except Exception as exc:
                assert type(exc).__name__ == "InfeasibleTarget", exc
    return done


def uses(reports: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool, str]]:
    return [(name, u["kind"], u["reused"], u["artifact"]) for name, r in reports.items() for u in r["sweep"]["shared"]]


def bucket_keys(settings: Settings) -> list[str]:
    return sorted(make_store(settings).list_keys("shared/"))


@pytest.fixture(scope="module")
def local_run(
    tmp_path_factory: pytest.TempPathFactory, stories_model: Path, stories_text: Path
) -> dict[str, dict[str, Any]]:
    """The cells on the local store (SQLite, file locks): the reports the S3 runs must equal."""
    root = tmp_path_factory.mktemp("local-run")
    settings = Settings(data_dir=root / "data")
    upgrade_head(settings)
    db = Database(settings)
    try:
        cache = StoreArtifactCache(LocalStore(root / "store"), db, root / "locks")
        return run_cells(spec_of(sweep_body(stories_model, stories_text)), root / "out", cache)
    finally:
        db.dispose()


def test_cells_share_the_dense_work_through_s3_like_the_local_store(
    local_run: dict[str, dict[str, Any]], tmp_path: Path, pg_url: str, s3_endpoint: str, s3_bucket: str,
    stories_model: Path, stories_text: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=pg_url, **s3_settings(s3_endpoint, s3_bucket))  # type: ignore[arg-type]
    db = Database(settings)
    try:
        with db.session() as session:
            session.query(SharedArtifact).delete()
            session.commit()
        cache = StoreArtifactCache(make_store(settings), db, settings.resolved_data_dir / "locks", "cell-1")
        spec = spec_of(sweep_body(stories_model, stories_text))
        first = run_cells(spec, tmp_path / "first", cache)

        # the same reports as on the local store, and the same artifacts (their names are their content keys)
        assert set(first) == set(local_run) == {"2ssp-0.05", "2ssp-0.375", "shortgpt-0.375"}
        for name, report in first.items():
            assert without(report, RUN_TIMING_KEYS | {"sweep"}) == without(local_run[name], RUN_TIMING_KEYS | {"sweep"})
            assert report["sweep"]["dense"] == local_run[name]["sweep"]["dense"], name
        assert [(n, k, r, a) for n, k, r, a in uses(first)] == uses(local_run)
        seen = uses(first)
        dense = [(name, reused) for name, kind, reused, _ in seen if kind == "dense"]
        assert dense == [("2ssp-0.05", False), ("2ssp-0.375", True), ("shortgpt-0.375", True)], dense
        scores = [(name, reused) for name, kind, reused, _ in seen if kind == "2ssp.neuron_scores"]
        assert scores == [("2ssp-0.05", False), ("2ssp-0.375", True)], scores
        note = first["2ssp-0.375"]["sweep"]["shared"][0]["note"]
        assert note == f"reused from {first['2ssp-0.05']['sweep']['shared'][0]['artifact']}"

        # in the bucket: each artifact's files and its manifest; each has a row that counts the cells that read it
        artifacts = {a for *_, a in seen}
        keys = bucket_keys(settings)
        assert {f"{a}/manifest.json" for a in artifacts} <= set(keys)
        assert {k.split("/")[1] for k in keys} == {a.split("/")[1] for a in artifacts}
        with db.session() as session:
            reads = {f"shared/{r.key}": r.reads for r in session.scalars(select(SharedArtifact))}
        expected = {a: sum(1 for *_, r, b in seen if b == a and r) for a in artifacts}
        dense_artifact = first["2ssp-0.05"]["sweep"]["shared"][0]["artifact"]
        expected[dense_artifact] += 1  # shortgpt at 0.05 read the dense measurements too, then failed
        assert reads == expected, reads

        # a second sweep computes nothing dense, with the same reports
        second = run_cells(spec, tmp_path / "second", cache)
        assert all(reused for _, _, reused, _ in uses(second)), uses(second)
        for name, report in second.items():
            assert without(report, RUN_TIMING_KEYS | {"sweep"}) == without(first[name], RUN_TIMING_KEYS | {"sweep"})
            assert report["sweep"]["dense"] == first[name]["sweep"]["dense"]
    finally:
        db.dispose()


@dataclass
class Stack:
    settings: Settings
    alice: Api
    workers: list[Proc]
    reaper: Proc


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    pg_factory: Callable[[], str],
    redis_server: str,
    s3_endpoint: str,
    test_data: Path,
) -> Iterator[Stack]:
    redis.Redis.from_url(redis_server).flushdb()
    bucket = f"twossp-test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=bucket)
    root = tmp_path_factory.mktemp("shared-s3")
    logs = root / "logs"
    logs.mkdir()
    settings = Settings(
        data_dir=root / "data",
        database_url=pg_factory(),
        broker_url=redis_server,
        allowed_local_roots=[test_data],
        lease_seconds=10,
        reaper_interval_s=0.5,
        artifact_gc_interval_s=1,  # the reaper looks for unused shared artifacts every second (TTL: the default)
        dispatch_grace_s=1,
        torch_threads=1,
        **s3_settings(s3_endpoint, bucket),  # type: ignore[arg-type]
    )
    api, base = start_api(settings, logs)
    reaper = start_reaper(settings, logs)
    workers = [start_worker(settings, logs), start_worker(settings, logs)]
    yield Stack(settings, Api(base, create_key(settings, "alice")), workers, reaper)
    for proc in [*workers, reaper, api]:
        proc.stop()


def cell_reports(stack: Stack, sweep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cell["name"]: stack.alice.job(cell["id"])["report"] for cell in sweep["cells"]["items"]
            if cell["state"] == "succeeded"}


def test_workers_share_the_dense_work_through_s3_and_the_reaper_expires_it(
    stack: Stack, local_run: dict[str, dict[str, Any]], stories_model: Path, stories_text: Path
) -> None:
    body = sweep_body(stories_model, stories_text)

    def run_sweep_on_workers() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        submitted = stack.alice.submit(body)
        assert submitted.status_code == 202, submitted.text
        job = stack.alice.wait_done(submitted.json()["id"], timeout=300)
        assert job["state"] == "succeeded" and job["cells"]["succeeded"] == 3, job
        return job, cell_reports(stack, job)

    first, reports = run_sweep_on_workers()
    # every cell's report equals the local-store run's; the artifacts are the same (content keys)
    assert set(reports) == set(local_run)
    for name, report in reports.items():
        assert without(report, RUN_TIMING_KEYS | {"sweep"}) == without(local_run[name], RUN_TIMING_KEYS | {"sweep"})
        assert report["sweep"]["dense"] == local_run[name]["sweep"]["dense"], name
        assert {(u["kind"], u["artifact"]) for u in report["sweep"]["shared"]} == {
            (u["kind"], u["artifact"]) for u in local_run[name]["sweep"]["shared"]}
    # computed once, whichever worker ran which cell, and read by the others from the bucket
    shared = {entry["kind"]: entry for entry in first["report"]["shared"]}
    assert shared["dense"]["computed_by"] is not None and len(shared["dense"]["reused_by"]) == 2, shared
    scores = shared["2ssp.neuron_scores"]
    assert scores["computed_by"] is not None and len(scores["reused_by"]) == 1, scores
    reused = [u for r in reports.values() for u in r["sweep"]["shared"] if u["reused"]]
    assert len(reused) == 3 and all(u["note"] == f"reused from {u['artifact']}" for u in reused), reused
    artifacts = {entry["artifact"] for entry in first["report"]["shared"]}
    assert {f"{a}/manifest.json" for a in artifacts} <= set(bucket_keys(stack.settings))

    db = Database(stack.settings)
    try:
        def rows() -> dict[str, SharedArtifact]:
            with db.session() as session:
                return {f"shared/{r.key}": r for r in session.scalars(select(SharedArtifact))}

        assert set(rows()) == artifacts
        # the reaper (collecting every second) keeps what was used within the TTL
        stack.reaper.wait_for_output("reaper started", timeout=30)
        wait_until(lambda: "shared artifacts expire after 30 days" in stack.reaper.output(), 10, "the TTL logged")
        # 40 days later, unused: the reaper deletes every artifact from the bucket and the database
        with db.session() as session:
            for row in session.scalars(select(SharedArtifact)):
                row.last_used_at -= timedelta(days=40)
            session.commit()
        wait_until(lambda: not rows() and not bucket_keys(stack.settings), 30, "the reaper to delete them")
        assert "deleted shared artifacts unused for 30 days" in stack.reaper.output()

        # the next sweep computes them again, with the same results, and stores them again
        again, rereports = run_sweep_on_workers()
        for name, report in rereports.items():
            assert without(report, RUN_TIMING_KEYS | {"sweep"}) == without(reports[name], RUN_TIMING_KEYS | {"sweep"})
            assert report["sweep"]["dense"] == reports[name]["sweep"]["dense"]
        recomputed = {entry["kind"]: entry for entry in again["report"]["shared"]}
        assert {e["artifact"] for e in recomputed.values()} == artifacts
        assert all(e["computed_by"] is not None for e in recomputed.values()), recomputed
        assert set(rows()) == artifacts
        assert {f"{a}/manifest.json" for a in artifacts} <= set(bucket_keys(stack.settings))
        # and a third reads everything, its reads recorded as uses
        before = {a: r.last_used_at for a, r in rows().items()}
        third, _ = run_sweep_on_workers()
        assert all(e["computed_by"] is None for e in third["report"]["shared"]), third["report"]["shared"]
        after = rows()
        assert all(after[a].last_used_at > before[a] and after[a].reads >= 1 for a in artifacts)
    finally:
        db.dispose()
    assert json.dumps(first["report"]["dense"]) == json.dumps(again["report"]["dense"])
