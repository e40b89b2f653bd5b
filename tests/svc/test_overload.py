"""Overload is shed: beyond `TWOSSP_MAX_IN_FLIGHT_REQUESTS` an API process answers `503` with `Retry-After` at once
(the probes excepted), and every `503`, `/readyz`'s included, carries `Retry-After`. Deterministic: a request is
held open by sending only part of its body, not by timing."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.db.migrate import upgrade_head
from service.settings import Settings

from .procs import Proc, create_key, start_api, wait_until
from .support import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, str]]:
    settings = Settings(data_dir=tmp_path / "data", embedded_worker=False, max_in_flight_requests=1, retry_after_s=7)
    logs = tmp_path / "logs"
    logs.mkdir()
    proc: Proc | None = None
    try:
        proc, base = start_api(settings, logs)
        yield base, create_key(settings, "alice")
    finally:
        if proc is not None:
            proc.stop()


def hold_open(base: str, key: str) -> socket.socket:
    """A `POST /jobs` whose body never finishes arriving: its handler waits for the rest, in flight."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"POST /jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 1000\r\n\r\n{{".encode()
    )
    return sock


def test_a_request_beyond_the_limit_gets_503_with_retry_after_and_the_probes_still_answer(
    api: tuple[str, str],
) -> None:
    base, key = api
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert client.get("/jobs").status_code == 200

    held = hold_open(base, key)

    def shed_while_held() -> httpx.Response | None:
        nonlocal held
        if select.select([held], [], [], 0)[0]:  # the held request was itself shed (a probe was in flight): again
            held.close()
            held = hold_open(base, key)
        response = client.get("/jobs")
        return response if response.status_code == 503 else None

    try:
        shed = wait_until(shed_while_held, 30, "the limit to be reached")
        assert shed.headers["Retry-After"] == "7"
        assert "at capacity" in shed.json()["detail"]
        assert client.post("/jobs", json={}).status_code == 503  # shed before its body is read or validated
        assert client.get("/healthz").status_code == 200  # the probes are neither counted nor shed
        assert client.get("/readyz").status_code == 200
    finally:
        held.close()  # the held request ends (the client went away) and frees its place
    wait_until(lambda: client.get("/jobs").status_code == 200, 10, "the place to be freed")


def test_readiness_503_carries_retry_after(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, embedded_worker=False, broker_url=f"redis://127.0.0.1:{free_port()}/0", retry_after_s=5
    )
    upgrade_head(settings)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("error")
    assert ready.headers["Retry-After"] == "5"
