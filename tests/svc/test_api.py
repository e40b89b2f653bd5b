"""HTTP API against real Postgres and a real Celery broker on Redis (no worker here: jobs stay queued)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.app import create_app
from service.db.models import Job
from service.db.session import Database
from service.keys import create_key
from service.settings import Settings
from worker.maintenance import run_maintenance

from .support import free_port, job_body


def queued_messages(redis_url: str, queue: str = "twossp") -> int:
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(client.llen(k) for k in client.keys(f"{queue}*") if client.type(k) == b"list")
    finally:
        client.close()


@pytest.fixture
def settings(tmp_path: Path, pg_url: str, redis_url: str, test_data: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=pg_url,
        broker_url=redis_url,
        allowed_local_roots=[test_data],
        max_body_bytes=16 * 1024,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def keys(settings: Settings) -> dict[str, str]:
    db = Database(settings)
    with db.session() as session:
        result = {"alice": create_key(session, "alice"), "bob": create_key(session, "bob")}
    db.dispose()
    return result


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def job_count(settings: Settings) -> int:
    db = Database(settings)
    with db.session() as session:
        count = session.scalar(select(func.count()).select_from(Job))
    db.dispose()
    return int(count or 0)


@pytest.fixture
def body(stories_model: Path, stories_text: Path) -> dict:
    return job_body(stories_model, stories_text)


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "store": "ok", "queue": "ok", "workers": "ok"}
    assert ready.json()["classes"] == {}  # no worker has advertised and nothing is queued


@pytest.mark.slow
def test_readiness_reports_an_unreachable_broker(settings: Settings) -> None:
    broken = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(broken)) as test_client:
        ready = test_client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["broker"].startswith("error")


def test_the_interactive_docs_load_without_a_cdn(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # every asset from this server
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        response = client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 1_000


def test_openapi_documents_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    routes = {
        "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/artifact", "/jobs/{job_id}/events",
        "/healthz", "/readyz",
    }
    assert routes <= set(spec["paths"])
    submit = spec["paths"]["/jobs"]["post"]
    variants = submit["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    schema = next(v for v in variants if v["properties"]["kind"]["const"] == "prune")
    assert {"model", "sparsity", "method", "calibration", "eval", "doc_separator", "seq_len"} <= set(
        schema["properties"]
    )
    assert {"202", "422", "413"} <= set(submit["responses"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_requests_need_a_valid_key(client: TestClient, body: dict) -> None:
    assert client.post("/jobs", json=body).status_code == 401
    assert client.get("/jobs", headers=auth("tsp_nope")).status_code == 401
    assert client.get("/jobs/x", headers={"Authorization": "Basic abc"}).status_code == 401


def test_submit_queues_on_the_broker(client: TestClient, keys: dict, body: dict, settings: Settings) -> None:
    response = client.post("/jobs", json=body, headers=auth(keys["alice"]))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued" and job["progress"] == 0 and job["report"] is None
    assert job["links"]["self"] == f"/jobs/{job['id']}"
    assert response.headers["location"] == job["links"]["self"]
    assert queued_messages(settings.broker_url) == 1
    db = Database(settings)
    with db.session() as session:
        row = session.get(Job, job["id"])
        assert row is not None and row.dispatched and row.attempt == 0
    db.dispose()
    got = client.get(f"/jobs/{job['id']}", headers=auth(keys["alice"])).json()
    assert {"id", "state", "stage", "progress", "error", "report"} <= set(got)


def _bad_inputs(test_data: Path, body: dict, tmp_root: Path) -> list[tuple[str, dict, str]]:
    text = test_data / "text" / "tinystories-val-1000.txt"
    cases: list[tuple[str, dict, str]] = []
    for value in (0, 1, -1, "abc", None):
        cases.append((f"sparsity={value!r}", {**body, "sparsity": value}, "sparsity"))
    cases += [
        ("missing model dir", {**body, "model": str(test_data / "models" / "does-not-exist")}, "no such model"),
        ("bad hub id", {**body, "model": "not a/valid id!"}, "hub id"),
        ("traversal", {**body, "model": f"{test_data}/../../../etc"}, "TWOSSP_ALLOWED_LOCAL_ROOTS"),
        ("outside roots", {**body, "model": "/etc"}, "TWOSSP_ALLOWED_LOCAL_ROOTS"),
        ("relative path", {**body, "model": "./models/x"}, "TWOSSP_ALLOWED_LOCAL_ROOTS"),
        ("data traversal", {**body, "eval": [f"{test_data}/../../etc/passwd"]}, "TWOSSP_ALLOWED_LOCAL_ROOTS"),
        ("data missing", {**body, "calibration": [f"{text}.missing:0:10"]}, "no such file"),
        ("unsupported architecture", {**body, "model": str(tmp_root / "gpt2ish")}, "not supported"),
        ("unknown method", {**body, "method": "magic"}, "unknown method"),
        ("unknown option", {**body, "options": {"nope": 1}}, "nope"),
        ("unknown field", {**body, "trust_remote_code": True}, "trust_remote_code"),
        ("infeasible", {**body, "options": {"num_attention_to_prune": 99}}, ""),
        ("refit option", {**body, "method": "2ssp-refit", "options": {"lambda": 1}}, "lambda"),
        ("refit infeasible", {**body, "method": "2ssp-refit", "options": {"num_attention_to_prune": 99}}, "99"),
        ("bad range", {**body, "eval": [f"{text}:9:3"]}, "END"),
        ("export format", {**body, "export": "zip"}, "export"),
        ("not portable", {**body, "method": "slicegpt", "export": "portable"}, "portable"),
        ("not an object", [1, 2], "JSON object"),
        ("hub id with a newline", {**body, "model": "org/name\n"}, "hub id"),
        ("empty separator", {**body, "doc_separator": ""}, "doc_separator"),
        ("huge seed", {**body, "seed": 2**70}, "seed"),
        ("range end 1e23", {**body, "eval": [f"{text}:0:1e23"]}, "plain integers"),
        ("range end too large", {**body, "eval": [f"{text}:0:{10**23}"]}, "at most"),
        ("endless search", {**body, "method": "evopress", "options": {"generations": 10**9}}, "generations"),
        ("window count", {**body, "calibration_windows": 10**7}, "calibration_windows"),
    ]
    return cases


def test_bad_inputs_are_rejected_before_queueing(
    tmp_path: Path, pg_url: str, redis_url: str, test_data: Path, body: dict
) -> None:
    fake = tmp_path / "roots" / "gpt2ish"
    fake.mkdir(parents=True)
    (fake / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    settings = Settings(
        data_dir=tmp_path / "data", database_url=pg_url, broker_url=redis_url,
        allowed_local_roots=[test_data, tmp_path / "roots"], max_body_bytes=16 * 1024,
    )
    db = Database(settings)
    with db.session() as session:
        key = create_key(session, "alice")
    db.dispose()
    with TestClient(create_app(settings)) as client:
        for name, bad, reason in _bad_inputs(test_data, body, tmp_path / "roots"):
            response = client.post("/jobs", json=bad, headers=auth(key))
            assert response.status_code == 422, (name, response.status_code, response.text)
            assert reason in response.json()["detail"], (name, response.json())
        response = client.post(
            "/jobs", content=b"{not json", headers={**auth(key), "content-type": "application/json"}
        )
        assert response.status_code == 422
        infinite = json.dumps({**body, "options": {"alpha": 1.5}}).replace("1.5", "Infinity").encode()
        response = client.post("/jobs", content=infinite, headers={**auth(key), "content-type": "application/json"})
        assert response.status_code == 422 and "alpha" in response.json()["detail"], response.text
        huge = {**body, "doc_separator": "x" * 20_000}
        response = client.post("/jobs", json=huge, headers=auth(key))
        assert response.status_code == 413 and "larger than" in response.json()["detail"]

        def chunks():
            yield b'{"model": "'
            for _ in range(40):
                yield b"x" * 1024
            yield b'"}'

        response = client.post("/jobs", content=chunks(), headers={**auth(key), "content-type": "application/json"})
        assert response.status_code == 413
    assert job_count(settings) == 0
    assert queued_messages(redis_url) == 0


def test_local_paths_need_configured_roots(tmp_path: Path, pg_url: str, redis_url: str, body: dict) -> None:
    settings = Settings(data_dir=tmp_path, database_url=pg_url, broker_url=redis_url)
    db = Database(settings)
    with db.session() as session:
        key = create_key(session, "alice")
    db.dispose()
    with TestClient(create_app(settings)) as client:
        response = client.post("/jobs", json=body, headers=auth(key))
    assert response.status_code == 422
    assert "TWOSSP_ALLOWED_LOCAL_ROOTS" in response.json()["detail"]


def test_idempotency_key_gives_one_job(client: TestClient, keys: dict, body: dict, settings: Settings) -> None:
    headers = {**auth(keys["alice"]), "Idempotency-Key": "req-1"}
    first = client.post("/jobs", json=body, headers=headers)
    second = client.post("/jobs", json=body, headers=headers)
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    other = client.post("/jobs", json={**body, "sparsity": 0.25}, headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["detail"]
    # the same key of another user is another job
    bob = client.post("/jobs", json=body, headers={**auth(keys["bob"]), "Idempotency-Key": "req-1"})
    assert bob.status_code == 202 and bob.json()["id"] != first.json()["id"]
    assert job_count(settings) == 2
    assert queued_messages(settings.broker_url) == 2


def test_concurrent_requests_with_one_idempotency_key(
    client: TestClient, keys: dict, body: dict, settings: Settings
) -> None:
    headers = {**auth(keys["alice"]), "Idempotency-Key": "race"}
    ids: list[str] = []
    barrier = threading.Barrier(6)

    def post() -> None:
        barrier.wait()
        response = client.post("/jobs", json=body, headers=headers)
        assert response.status_code in (200, 202), response.text
        ids.append(response.json()["id"])

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ids) == 6
    assert job_count(settings) == 1


def test_other_users_get_404(client: TestClient, keys: dict, body: dict) -> None:
    job_id = client.post("/jobs", json=body, headers=auth(keys["alice"])).json()["id"]
    bob = auth(keys["bob"])
    assert client.get(f"/jobs/{job_id}", headers=bob).status_code == 404
    assert client.get(f"/jobs/{job_id}/artifact", headers=bob).status_code == 404
    assert client.get(f"/jobs/{job_id}/manifest", headers=bob).status_code == 404
    assert client.post(f"/jobs/{job_id}/cancel", headers=bob).status_code == 404
    assert client.get(f"/jobs/{job_id}/events", headers=bob).status_code == 404
    assert client.get("/jobs", headers=bob).json()["total"] == 0
    assert client.get(f"/jobs/{job_id}", headers=auth(keys["alice"])).status_code == 200


def test_list_pages_and_filters(client: TestClient, keys: dict, body: dict) -> None:
    alice = auth(keys["alice"])
    ids = [client.post("/jobs", json={**body, "seed": i}, headers=alice).json()["id"] for i in range(5)]
    client.post(f"/jobs/{ids[0]}/cancel", headers=alice)
    page = client.get("/jobs?limit=2", headers=alice).json()
    assert page["total"] == 5 and len(page["items"]) == 2 and page["next"]
    assert page["items"][0]["id"] == ids[-1]  # newest first
    seen = [j["id"] for j in page["items"]]
    while page["next"]:
        page = client.get(page["next"], headers=alice).json()
        seen += [j["id"] for j in page["items"]]
    assert sorted(seen) == sorted(ids)
    cancelled = client.get("/jobs?state=cancelled", headers=alice).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    assert client.get("/jobs?state=queued", headers=alice).json()["total"] == 4
    assert client.get("/jobs?state=bogus", headers=alice).status_code == 422
    assert client.get("/jobs?limit=0", headers=alice).status_code == 422


def test_cancel_a_queued_job(client: TestClient, keys: dict, body: dict) -> None:
    alice = auth(keys["alice"])
    job_id = client.post("/jobs", json=body, headers=alice).json()["id"]
    response = client.post(f"/jobs/{job_id}/cancel", headers=alice)
    assert response.status_code == 202 and response.json()["state"] == "cancelled"
    assert client.post(f"/jobs/{job_id}/cancel", headers=alice).json()["state"] == "cancelled"
    artifact = client.get(f"/jobs/{job_id}/artifact", headers=alice)
    assert artifact.status_code == 409 and "cancelled" in artifact.json()["detail"]
    # the history, one event per page: submitted, dispatched, cancelled (the second cancel changed nothing)
    page = client.get(f"/jobs/{job_id}/events?limit=1", headers=alice).json()
    events = page["items"]
    while page["next"]:
        page = client.get(page["next"], headers=alice).json()
        events += page["items"]
    assert [(e["kind"], e["state"], e["attempt"]) for e in events] == [
        ("submitted", "queued", 0), ("dispatched", "queued", 0), ("cancelled", "cancelled", 0)
    ]
    assert events[-1]["detail"] == "cancelled by user" and events[0]["at"] <= events[-1]["at"]
    after = client.get(f"/jobs/{job_id}/events?after={events[1]['id']}", headers=alice).json()
    assert [e["kind"] for e in after["items"]] == ["cancelled"] and after["next"] is None


def test_outbox_survives_a_broker_outage(
    tmp_path: Path, pg_url: str, redis_url: str, test_data: Path, body: dict
) -> None:
    """The row commits even when the broker is down; the dispatcher publishes it later."""
    down = Settings(
        data_dir=tmp_path, database_url=pg_url, broker_url=f"redis://127.0.0.1:{free_port()}/0",
        allowed_local_roots=[test_data], dispatch_grace_s=0,
    )
    db = Database(down)
    with db.session() as session:
        key = create_key(session, "alice")
    with TestClient(create_app(down)) as client:
        response = client.post("/jobs", json=body, headers=auth(key))
    assert response.status_code == 202
    job_id = response.json()["id"]
    with db.session() as session:
        assert session.get(Job, job_id).dispatched is False

    from service.broker import CeleryBroker

    up = down.model_copy(update={"broker_url": redis_url})
    broker = CeleryBroker(redis_url, up.celery_queue)
    result = run_maintenance(db, broker, up)
    broker.close()
    assert result.dispatched == [job_id]
    assert queued_messages(redis_url) == 1
    with db.session() as session:
        assert session.get(Job, job_id).dispatched is True
    assert run_maintenance(db, CeleryBroker(redis_url, up.celery_queue), up).dispatched == []
    db.dispose()
