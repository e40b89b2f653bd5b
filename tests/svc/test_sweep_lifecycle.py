"""A sweep's parent and cells through the lifecycle, on Postgres, without running a model: the cells move the parent,
its comparison is claimed once and written by the reaper when no cell's worker did, a lost writer is reaped and
the comparison written again, cancel reaches every cell, cells ending at once still settle the parent."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from api.services.jobs import cancel_job, submit_job
from service import lifecycle
from service.broker import EmbeddedBroker
from service.db.models import Job, JobEvent, JobState
from service.db.session import Database
from service.db.types import utcnow
from service.keys import create_key, user_for_key
from service.settings import Settings
from service.store import make_store
from worker.maintenance import Reaper

from .support import job_body

DATASET = "stories:500:540"


@pytest.fixture
def env(tmp_path: Path, pg_url: str, test_data: Path):
    settings = Settings(data_dir=tmp_path, database_url=pg_url, allowed_local_roots=[test_data], max_attempts=2,
                        lease_seconds=30, dispatch_grace_s=0)
    db = Database(settings)
    yield settings, db
    db.dispose()


def submit(settings: Settings, db: Database, model: Path, text: Path, methods: list[str], sparsities: list[float]):
    body = job_body(model, text, eval=[f"{text}:500:540"], calibration_windows=4)
    del body["sparsity"]
    body.update(kind="sweep", methods=methods, sparsities=sparsities)
    with db.session() as session:
        user = user_for_key(session, create_key(session, f"user-{len(methods)}-{len(sparsities)}"))
        parent = submit_job(session, EmbeddedBroker(), settings, user, body, None).job
        cells = list(session.scalars(select(Job).where(Job.parent_id == parent.id).order_by(Job.created_at)))
        return user, parent.id, [c.id for c in cells]


def report(method: str, sparsity: float, pruned: float) -> dict[str, Any]:
    """A cell's report as run_sweep_cell returns it (only what the comparison reads)."""
    dense = {"perplexity": [{"dataset": DATASET, "perplexity": 5.0}], "throughput_tokens_per_s": None,
             "params": {"blocks": 100, "total": 120}, "eval_windows": {DATASET: 2}, "eval_cap": None}
    return {
        "method": method, "sparsity_target": sparsity, "sparsity_achieved": sparsity,
        "perplexity": [{"dataset": DATASET, "domain": "in-domain", "dense": 5.0, "pruned": pruned}],
        "held_out": None, "timings": {"prune_s": 1.0}, "params": {"blocks_before": 100, "blocks_after": 50},
        "removed_blocks": [], "removed_attention": [0], "removed_mlp": [], "kept_ffn_neurons": 8,
        "sweep": {"dense": dense, "data": {"seq_len": 512}, "timings": {"load_s": 1.0, "total_s": 3.0},
                  "runtime": {"device": "cpu"}},
    }


def claim(db: Database, job_id: str, worker: str = "w:1") -> lifecycle.Claim:
    with db.session() as session:
        got = lifecycle.claim(session, job_id, worker, 30)
    assert got is not None
    return got


def finish(db: Database, got: lifecycle.Claim, state: JobState, **values: Any) -> bool:
    with db.session() as session:
        return lifecycle.finish(session, got, state, **values)


def row(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def kinds(db: Database, job_id: str) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def test_cells_move_the_sweep_and_its_comparison_is_written_once(
    env, stories_model: Path, stories_text: Path, tmp_path: Path
) -> None:
    settings, db = env
    _, parent_id, cell_ids = submit(settings, db, stories_model, stories_text, ["2ssp", "shortgpt"], [0.25, 0.5])
    assert row(db, parent_id).state == "queued" and len(cell_ids) == 4
    with db.session() as session:
        # the sweep itself is never claimed, nor taken by the embedded worker, and nobody can write its comparison
        assert lifecycle.claim(session, parent_id, "w:0", 30) is None
        assert lifecycle.unclaimable(session, parent_id) is not None
        assert lifecycle.next_queued(session) == cell_ids[0]
        assert lifecycle.claim_comparison(session, parent_id, "w:0", 30) is None

    claims = {cell_id: claim(db, cell_id, f"w:{i}") for i, cell_id in enumerate(cell_ids)}
    assert row(db, parent_id).state == "running"
    cells = {cell_id: row(db, cell_id) for cell_id in cell_ids}
    # two cells end at once; the last two in order; one of them fails
    barrier = threading.Barrier(2)

    def end(cell_id: str) -> None:
        cell = cells[cell_id]
        barrier.wait()
        assert finish(db, claims[cell_id], JobState.succeeded, report=report(cell.method, cell.sparsity, 7.0))

    threads = [threading.Thread(target=end, args=(cell_id,)) for cell_id in cell_ids[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with db.session() as session:
        assert lifecycle.awaiting_comparison(session) == []  # two cells still run
    failed = cells[cell_ids[2]]
    assert finish(db, claims[cell_ids[2]], JobState.failed, error="InfeasibleTarget: no such target")
    last = cells[cell_ids[3]]
    assert finish(db, claims[cell_ids[3]], JobState.succeeded, report=report(last.method, last.sparsity, 9.0))
    assert row(db, parent_id).state == "running"
    assert kinds(db, parent_id).count("cell_ended") == 4

    # the comparison is claimed once; a lost writer is reaped and the comparison written again, by the reaper
    with db.session() as session:
        assert lifecycle.awaiting_comparison(session) == [parent_id]
        writer = lifecycle.claim_comparison(session, parent_id, "w:lost", 30)
        assert writer is not None and writer.attempt == 1
        assert lifecycle.claim_comparison(session, parent_id, "w:other", 30) is None
        assert lifecycle.awaiting_comparison(session) == []
        later = utcnow() + timedelta(seconds=60)
        assert lifecycle.expired_leases(session, later) == [(parent_id, 1)]
        assert lifecycle.reap(session, parent_id, 1, later) == "queued"  # waiting for a writer again
    parent = row(db, parent_id)
    assert parent.state == "running" and parent.worker_id is None
    with db.session() as session:  # a sweep waiting for its comparison holds no lease to expire
        assert lifecycle.expired_leases(session, utcnow() + timedelta(seconds=60)) == []
    store = make_store(settings)
    result = Reaper(db, EmbeddedBroker(), settings, store).run()
    assert result.sweeps == [parent_id]
    parent = row(db, parent_id)
    assert parent.state == "succeeded" and parent.attempt == 2 and parent.progress == 100
    rows = parent.report["rows"]
    order = [(c.method, c.sparsity) for c in cells.values()]
    assert [(r["method"], r["sparsity_target"]) for r in rows] == order
    assert [r["error"] for r in rows] == [None, None, "InfeasibleTarget: no such target", None]
    assert rows[2]["method"] == failed.method
    assert {c["state"] for c in parent.report["cells"]} == {"succeeded", "failed"}
    assert parent.report["timings"]["load_s"] == 3.0  # each succeeded cell's setup, summed
    files = store.get_bytes(f"{parent.artifact['prefix']}/files/comparison.json")
    assert json.loads(files) == rows
    # the writer that lost its lease is fenced out of the finished sweep
    assert not finish(db, writer, JobState.failed, error="late")
    assert kinds(db, parent_id)[-1] == "succeeded"


def test_cancel_of_a_sweep_reaches_every_cell_and_the_sweep_ends_with_its_last(
    env, stories_model: Path, stories_text: Path
) -> None:
    settings, db = env
    user, parent_id, cell_ids = submit(settings, db, stories_model, stories_text, ["2ssp"], [0.25, 0.375, 0.5])
    running = [claim(db, cell_ids[0], "w:1"), claim(db, cell_ids[1], "w:2")]
    with db.session() as session:
        sweep = cancel_job(session, user, parent_id)
        assert sweep.cancel_requested and sweep.state == "running"
    assert row(db, cell_ids[2]).state == "cancelled"
    assert all(row(db, c.job_id).cancel_requested and row(db, c.job_id).state == "running" for c in running)

    # both running cells stop at once: the sweep is cancelled with the last, whichever it is
    barrier = threading.Barrier(2)

    def stop(got: lifecycle.Claim) -> None:
        barrier.wait()
        assert finish(db, got, JobState.cancelled, error=lifecycle.CANCELLED_BY_USER)

    threads = [threading.Thread(target=stop, args=(got,)) for got in running]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    parent = row(db, parent_id)
    assert parent.state == "cancelled" and parent.error == lifecycle.CANCELLED_BY_USER
    events = kinds(db, parent_id)
    assert events.count("cell_ended") == 3 and events[-1] == "cancelled" and "cancel_requested" in events
    with db.session() as session:
        assert lifecycle.awaiting_comparison(session) == []

    # a sweep none of whose cells runs is cancelled at once
    user, other, cells = submit(settings, db, stories_model, stories_text, ["shortgpt"], [0.25, 0.5])
    with db.session() as session:
        assert cancel_job(session, user, other).state == "cancelled"
    assert {row(db, c).state for c in cells} == {"cancelled"}


def test_a_cell_is_not_submitted_on_its_own(env, stories_model: Path, stories_text: Path) -> None:
    from api.errors import InputRejected

    settings, db = env
    with db.session() as session:
        user = user_for_key(session, create_key(session, "erin"))
        with pytest.raises(InputRejected, match="not 'cell'"):
            submit_job(session, EmbeddedBroker(), settings, user, {**job_body(stories_model, stories_text),
                                                                   "kind": "cell"}, None)


def test_a_sweep_over_several_models_has_a_cell_per_model_method_and_sparsity(
    env, stories_model: Path, slow_model: Path, stories_text: Path, test_data: Path
) -> None:
    from api.errors import InputRejected
    from twossp_core.errors import InvalidSpec

    settings, db = env
    settings = Settings(**{**settings.model_dump(), "allowed_local_roots": [test_data, slow_model.parent],
                           "max_sweep_runs": 4})
    body = job_body(stories_model, stories_text, eval=[f"{stories_text}:500:540"], calibration_windows=4)
    del body["sparsity"], body["model"]
    body.update(kind="sweep", methods=["2ssp", "shortgpt"], sparsities=[0.5],
                models=[str(stories_model), str(slow_model), str(stories_model)])
    with db.session() as session:
        user = user_for_key(session, create_key(session, "frank"))
        parent = submit_job(session, EmbeddedBroker(), settings, user, body, None).job
        cells = list(session.scalars(select(Job).where(Job.parent_id == parent.id).order_by(Job.created_at)))
        assert parent.model == str(stories_model) and parent.spec["models"] == [str(stories_model), str(slow_model)]
        assert [(c.model, c.method) for c in cells] == [
            (m, method) for m in (str(stories_model), str(slow_model)) for method in ("2ssp", "shortgpt")
        ]
        assert all(c.spec["model"] == c.model for c in cells)
        with pytest.raises(InputRejected, match=r"6 runs \(2 models x 3 methods x 1 sparsities\)"):
            submit_job(session, EmbeddedBroker(), settings, user, {**body, "methods": ["2ssp", "shortgpt", "window"]},
                       None)
        with pytest.raises(InvalidSpec, match="is not one of models"):
            submit_job(session, EmbeddedBroker(), settings, user, {**body, "model": "/elsewhere"}, None)
        with pytest.raises(InputRejected, match="TWOSSP_ALLOWED_LOCAL_ROOTS"):
            submit_job(session, EmbeddedBroker(), settings, user, {**body, "models": [str(stories_model), "/etc"]},
                       None)


def test_a_sweeps_cells_are_listed_in_its_order(env, stories_model: Path, stories_text: Path) -> None:
    """Cells inserted in one flush may share a clock reading; the listing (and so the comparison's rows and the
    dashboard's table) still follows the sweep's methods x sparsities order, never the random ids'."""
    from service.sweeps import cells_of

    settings, db = env
    methods, sparsities = ["window", "2ssp", "shortgpt", "slicegpt"], [0.5, 0.25, 0.375]
    _, parent_id, _ = submit(settings, db, stories_model, stories_text, methods, sparsities)
    with db.session() as session:
        spec = session.get(Job, parent_id).spec  # its canonical order: methods as given, sparsities ascending
        assert spec["methods"] == methods and spec["sparsities"] == sorted(sparsities)
        cells = cells_of(session, [parent_id])[parent_id]
        assert [(c.method, c.spec["sparsity"]) for c in cells] == [
            (m, s) for m in spec["methods"] for s in spec["sparsities"]
        ]
        stamps = [c.created_at for c in cells]
        assert stamps == sorted(set(stamps))  # strictly increasing
