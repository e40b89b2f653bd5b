"""Zero-shot tasks through the service: a job asking for tasks runs them from the workers' TWOSSP_TASK_DATA, its
report carries the dense and pruned accuracy, the job page shows them, and the exported model's card lists them as
model-index results (the approximate task left out), each with the limit it was scored to."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.client import download_artifact

from .procs import Embedded, bare_env
from .support import job_body

pytestmark = pytest.mark.slow


@pytest.fixture
def serve(tmp_path: Path, test_data: Path) -> Iterator[Embedded]:
    server = Embedded(tmp_path, bare_env([test_data], TWOSSP_TASK_DATA=str(test_data / "tasks")))
    yield server
    server.proc.stop()


def page_of(serve: Embedded, path: str) -> str:
    with httpx.Client(base_url=serve.base, timeout=30) as client:
        login = client.get("/ui/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', login)[1]
        client.post("/ui/login", data={"csrf": csrf, "api_key": serve.key, "next": "/ui"})
        return client.get(path).text


def test_a_job_reports_its_tasks_on_the_page_and_in_the_card(
    serve: Embedded, tmp_path: Path, test_data: Path, stories_model: Path, stories_text: Path
) -> None:
    from huggingface_hub import ModelCard

    body = job_body(stories_model, stories_text, tasks=["winogrande", "hellaswag"], task_limit=4,
                    task_limits={"winogrande": 3})
    response = serve.api.submit(body)
    assert response.status_code == 202, response.text
    job = serve.api.wait_done(response.json()["id"], timeout=180)
    assert job["state"] == "succeeded", job.get("error")
    block = job["report"]["zero_shot"]
    assert [block["tasks"][t]["n"] for t in ("winogrande", "hellaswag")] == [3, 4]
    assert block["subset"].endswith("; winogrande: first 3")
    assert block["tasks"]["hellaswag"]["approximate"] and not block["tasks"]["winogrande"]["approximate"]
    assert block["tasks"]["winogrande"]["source"] == str(test_data / "tasks" / "winogrande" / "dev.jsonl")
    pruned = block["tasks"]["winogrande"]["pruned"]

    page = page_of(serve, f"/ui/jobs/{job['id']}")
    assert "Zero-shot accuracy" in page and "hellaswag*" in page and "* Approximate:" in page
    assert f"{pruned['acc']:.4f} ± {pruned['acc_stderr']:.4f}" in page

    model_dir = download_artifact(serve.base, serve.key, job["id"], tmp_path / "download")
    card = ModelCard.load(model_dir / "README.md")
    results = {(r.dataset_type, r.metric_type): r for r in card.data.eval_results}
    assert set(results) == {("allenai/winogrande", "acc")}  # the approximate HellaSwag figure stays out
    result = results["allenai/winogrande", "acc"]
    assert result.metric_value == round(pruned["acc"], 4) and result.dataset_args == {"num_few_shot": 0, "limit": 3}
    assert "hellaswag (approximate)" in card.text
