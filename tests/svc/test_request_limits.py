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
