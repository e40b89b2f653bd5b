"""A refusal names the request fields it is about as data: the API's 422 lists every bad field beside its message
(`fields`), and the dashboard's form shows each message next to its own field, from that list alone. Through the
real app on SQLite (no worker: nothing runs)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from service.db.migrate import upgrade_head
from service.settings import Settings

from .test_ui import csrf_of, form, jobs_in_db, key_for, signed_in

ALERT = re.compile(r'id="error-(?P<field>[\w-]+)" role="alert">(?P<message>[^<]*)<')


@pytest.fixture
def app(tmp_path: Path, test_data: Path) -> Iterator[Any]:
    # a small cap on a job's work: a plan over it is refused with no field (it spans seq_len, windows, data)
    settings = Settings(data_dir=tmp_path, embedded_worker=False, allowed_local_roots=[test_data],
                        max_job_tokens=200_000)
    upgrade_head(settings)
    application = create_app(settings)
    yield application
    application.state.db.dispose()


def request(stories_model: Path, stories_text: Path, **fields: Any) -> dict[str, Any]:
    body = {"model": str(stories_model), "sparsity": 0.375, "seq_len": 128, "doc_separator": "<|endoftext|>",
            "calibration": [f"{stories_text}:0:50"], "eval": [f"{stories_text}:50:60"], "calibration_windows": 4,
            "eval_windows": 4, "measure_throughput": False}
    return {**body, **fields}


def post(app: Any, body: dict[str, Any]) -> Any:
    client = TestClient(app)
    return client.post("/jobs", json=body, headers={"Authorization": f"Bearer {key_for(app, 'alice')}"})


def test_a_request_with_several_bad_fields_lists_each_with_its_message(
    app: Any, stories_model: Path, stories_text: Path
) -> None:
    response = post(app, request(stories_model, stories_text, sparsity=1.5, seq_len=4, options={"nope": 1},
                                 export="gguf", export_options={"dtype": "f16"}))
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["detail"] == (  # the message as before, every problem in one line
        "seq_len: Input should be greater than or equal to 8; sparsity: Input should be less than 1; "
        "export options for gguf: dtype: Extra inputs are not permitted; "
        "options for 2ssp: nope: Extra inputs are not permitted"
    )
    assert answer["fields"] == [
        {"field": "seq_len", "message": "seq_len: Input should be greater than or equal to 8"},
        {"field": "sparsity", "message": "sparsity: Input should be less than 1"},
        {"field": "export_options.dtype", "message": "export options for gguf: dtype: Extra inputs are not permitted"},
        {"field": "options.nope", "message": "options for 2ssp: nope: Extra inputs are not permitted"},
    ]

    sweep = request(stories_model, stories_text, kind="sweep", methods=["nope", "2ssp"], sparsities=[2],
                    options={"2ssp": {"alpha": "x"}})
    del sweep["sparsity"]
    fields = {item["field"] for item in post(app, sweep).json()["fields"]}
    assert fields == {"sparsities", "methods", "options.2ssp.alpha"}


def test_path_checks_and_the_preflight_name_their_field(
    app: Any, stories_model: Path, stories_text: Path, test_data: Path
) -> None:
    cases = [
        ({"eval": [f"{stories_text}:50:60", "/etc/passwd"]}, "eval.1"),
        ({"calibration": [f"{test_data}/nowhere.txt"]}, "calibration.0"),
        ({"model": "/etc"}, "model"),
        ({"model": "not a model id"}, "model"),
        ({"sparsity": 0.999}, "sparsity"),  # infeasible on this model (the method's preflight)
        ({"export": "decilm"}, "export"),  # stories260k's FFN width is no multiple of 256
    ]
    for fields, field in cases:
        response = post(app, request(stories_model, stories_text, **fields))
        assert response.status_code == 422, (fields, response.text)
        answer = response.json()
        assert answer["fields"] == [{"field": field, "message": answer["detail"]}], (fields, answer)
    # a refusal that spans fields (the plan's work over the cap) names none
    response = post(app, request(stories_model, stories_text, eval_windows=1000))
    assert response.status_code == 422 and "planned work" in response.json()["detail"]
    assert "fields" not in response.json()


def test_the_form_shows_each_error_next_to_its_field_and_the_rest_at_the_top(
    app: Any, stories_model: Path, stories_text: Path
) -> None:
    alice = signed_in(app, "alice")
    data = {**form(stories_model, stories_text, sparsity="1", seq_len="4", options='{"nope": 1}',
                   eval=f"{stories_text}:50:60\n/etc/passwd", export_options='{"dtype": "f16"}', export="gguf"),
            "csrf": csrf_of(alice)}
    response = alice.post("/ui/submit", data=data)
    assert response.status_code == 422
    shown = {m["field"]: m["message"].replace("&#39;", "'") for m in ALERT.finditer(response.text)}
    assert set(shown) == {"sparsity", "seq_len", "options", "export_options"}, shown
    assert shown["sparsity"] == "sparsity: Input should be less than 1"
    assert shown["seq_len"] == "seq_len: Input should be greater than or equal to 8"
    assert shown["options"] == "options for 2ssp: nope: Extra inputs are not permitted"
    assert shown["export_options"] == "export options for gguf: dtype: Extra inputs are not permitted"

    # once the request is well-formed, the path check names the evaluation data's second line
    data = {**form(stories_model, stories_text, eval=f"{stories_text}:50:60\n/etc/passwd"), "csrf": csrf_of(alice)}
    shown = {m["field"]: m["message"] for m in ALERT.finditer(alice.post("/ui/submit", data=data).text)}
    assert set(shown) == {"eval"} and "/etc/passwd" in shown["eval"], shown

    # a sweep: the methods and the sparsities each by their own field, a method's option by the options
    data = {**form(stories_model, stories_text, kind="sweep", sparsities="0.25, 2", options='{"2ssp": {"alpha": "x"}}'),
            "methods": ["2ssp"], "csrf": csrf_of(alice)}
    shown = {m["field"]: m["message"] for m in ALERT.finditer(alice.post("/ui/submit", data=data).text)}
    assert set(shown) == {"sparsities", "options"} and "alpha" in shown["options"], shown

    # no field: at the top of the form
    data = {**form(stories_model, stories_text, eval_windows="1000"), "csrf": csrf_of(alice)}
    shown = {m["field"]: m["message"] for m in ALERT.finditer(alice.post("/ui/submit", data=data).text)}
    assert set(shown) == {"form"} and shown["form"].startswith("planned work"), shown
    assert jobs_in_db(app) == []


def test_the_openapi_error_schema_has_the_fields() -> None:
    from api.openapi import ERROR_SCHEMA

    fields = ERROR_SCHEMA["properties"]["fields"]  # type: ignore[index]
    assert fields["items"]["required"] == ["field", "message"]
    example = ERROR_SCHEMA["examples"][0]  # type: ignore[index]
    assert example["detail"] == "; ".join(item["message"] for item in example["fields"])
