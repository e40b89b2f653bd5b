"""The submit form's zero-shot fields (tasks, task_limit) and the planned work of zero-shot scoring, through the real
app on SQLite (no worker: jobs stay queued)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from twossp_core.plan.tasks import PAPER_TASKS, TASK_NAMES

from .test_ui import csrf_of, form, jobs_in_db, key_for, signed_in

ALERT = re.compile(r'id="error-(?P<field>[\w-]+)" role="alert">(?P<message>[^<]*)<')


def test_the_form_offers_every_task_and_submits_the_checked_ones_with_their_limit(
    app: Any, stories_model: Path, stories_text: Path
) -> None:
    alice = signed_in(app, "alice")
    page = alice.get("/ui/submit").text
    offered = re.findall(r'name="tasks" value="([^"]+)"', page)
    assert offered == ["paper", *TASK_NAMES]
    assert 'id="task_limit" name="task_limit"' in page and "14,042 items over 57 subjects" in page

    data = {**form(stories_model, stories_text, task_limit="10"), "tasks": ["paper"], "csrf": csrf_of(alice)}
    response = alice.post("/ui/submit", data=data, follow_redirects=False)
    assert response.status_code == 303, ALERT.findall(response.text)
    data = {**form(stories_model, stories_text, task_limit="arc_easy=7"), "tasks": ["piqa", "arc_easy"],
            "csrf": csrf_of(alice)}
    assert alice.post("/ui/submit", data=data, follow_redirects=False).status_code == 303
    data = {**form(stories_model, stories_text), "csrf": csrf_of(alice)}  # none checked: no zero-shot scoring
    assert alice.post("/ui/submit", data=data, follow_redirects=False).status_code == 303
    specs = sorted((job.spec for job in jobs_in_db(app)), key=lambda spec: -len(spec["tasks"]))
    assert (specs[0]["tasks"], specs[0]["task_limit"]) == (list(PAPER_TASKS), 10)
    assert (specs[0]["task_limits"], specs[1]["task_limits"]) == ({}, {"arc_easy": 7})
    assert (specs[1]["tasks"], specs[1]["task_limit"]) == (["piqa", "arc_easy"], None)
    assert specs[2]["tasks"] == []


def test_bad_zero_shot_fields_are_shown_next_to_them_and_the_boxes_stay_checked(
    app: Any, stories_model: Path, stories_text: Path
) -> None:
    alice = signed_in(app, "alice")
    data = {**form(stories_model, stories_text, task_limit="0"), "tasks": ["piqa", "nope"], "csrf": csrf_of(alice)}
    response = alice.post("/ui/submit", data=data)
    assert response.status_code == 422
    shown = {m["field"]: m["message"].replace("&#39;", "'") for m in ALERT.finditer(response.text)}
    assert set(shown) == {"tasks", "task_limit"}, shown
    assert "unknown zero-shot task 'nope'" in shown["tasks"] and "greater than or equal to 1" in shown["task_limit"]
    assert re.search(r'name="tasks" value="piqa" checked', response.text)
    # a task's own limit is typed into the same field, and its refusal is shown there
    for typed, message in (("5, mmlu=2", "'mmlu' is not a task of this job"), ("piqa=", "neither N nor TASK=N")):
        data = {**form(stories_model, stories_text, task_limit=typed), "tasks": ["piqa"], "csrf": csrf_of(alice)}
        response = alice.post("/ui/submit", data=data)
        assert response.status_code == 422
        shown = {m["field"]: m["message"].replace("&#39;", "'") for m in ALERT.finditer(response.text)}
        assert list(shown) == ["task_limit"] and message in shown["task_limit"], shown
    assert jobs_in_db(app) == []


def test_unbounded_zero_shot_scoring_is_refused_like_an_unbounded_evaluation(
    app: Any, stories_model: Path, stories_text: Path
) -> None:
    client = TestClient(app)
    body = {"model": str(stories_model), "sparsity": 0.375, "seq_len": 128, "doc_separator": "<|endoftext|>",
            "calibration": [f"{stories_text}:0:50"], "eval": [f"{stories_text}:50:60"], "eval_windows": 4,
            "measure_throughput": False, "tasks": ["paper"]}
    headers = {"Authorization": f"Bearer {key_for(app, 'alice')}"}
    response = client.post("/jobs", json=body, headers=headers)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "planned work" in detail and "zero-shot 2 x" in detail and "task_limit" in detail
    assert client.post("/jobs", json={**body, "task_limit": 100}, headers=headers).status_code == 202
