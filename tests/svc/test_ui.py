"""The dashboard's sign-in, CSRF protection, per-user isolation and form validation, through the real app on
SQLite (no worker: jobs stay queued). The browser test (test_ui_browser.py) runs the pages end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import update

from service.db.models import ApiKey, Job
from service.db.types import utcnow
from service.keys import create_key

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def key_for(app: Any, name: str) -> str:
    with app.state.db.session() as session:
        return create_key(session, name)


def jobs_in_db(app: Any) -> list[Job]:
    with app.state.db.session() as session:
        return list(session.query(Job).all())


def signed_in(app: Any, name: str, base_url: str = "http://testserver") -> TestClient:
    client = TestClient(app, base_url=base_url)
    page = client.get("/ui/login")
    response = client.post(
        "/ui/login", data={"csrf": CSRF_RE.search(page.text)[1], "api_key": key_for(app, name), "next": "/ui"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/ui", response.text
    return client


def csrf_of(client: TestClient, path: str = "/ui/submit") -> str:
    return CSRF_RE.search(client.get(path).text)[1]


def form(stories_model: Path, stories_text: Path, **fields: str) -> dict[str, str]:
    values = {
        "kind": "prune", "model": str(stories_model), "method": "2ssp", "sparsity": "0.375",
        "calibration": f"{stories_text}:0:50", "eval": f"{stories_text}:50:60", "seq_len": "128",
        "doc_separator": "<|endoftext|>",
    }
    values.update(fields)
    return values


def test_sign_in_sets_a_strict_http_only_cookie_and_refuses_bad_keys(app: Any) -> None:
    client = TestClient(app)
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/login?next=%2Fui"
    page = client.get("/ui/login")
    token = CSRF_RE.search(page.text)[1]
    wrong = client.post("/ui/login", data={"csrf": token, "api_key": "tsp_wrong"}, follow_redirects=False)
    assert wrong.status_code == 401 and "Invalid API key" in wrong.text and "twossp_session" not in client.cookies
    forged = client.post("/ui/login", data={"csrf": "forged", "api_key": key_for(app, "alice")})
    assert forged.status_code == 403 and "twossp_session" not in client.cookies

    response = client.post(
        "/ui/login", data={"csrf": token, "api_key": key_for(app, "alice"), "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/ui"  # no open redirect
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("twossp_session="))
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/ui"} <= attributes and "secure" not in attributes
    page = client.get("/ui")
    assert page.status_code == 200 and "alice" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]

    over_https = signed_in(app, "carol", base_url="https://testserver")
    assert over_https.cookies.get("twossp_session")
    https_login = TestClient(app, base_url="https://testserver")
    token = CSRF_RE.search(https_login.get("/ui/login").text)[1]
    response = https_login.post(
        "/ui/login", data={"csrf": token, "api_key": key_for(app, "dave")}, follow_redirects=False
    )
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("twossp_session="))
    assert "secure" in cookie.lower()


def test_a_tampered_cookie_or_revoked_key_ends_the_session(app: Any) -> None:
    client = signed_in(app, "alice")
    value = client.cookies["twossp_session"]
    key_id, expires, nonce, mac = value.split(".")
    for forged in (f"{key_id}.{int(expires) + 10}.{nonce}.{mac}", f"{key_id}.{expires}.{nonce}.{'0' * 64}", "x"):
        other = TestClient(app)
        other.cookies.set("twossp_session", forged, path="/ui")
        assert other.get("/ui", follow_redirects=False).status_code == 303
    assert client.get("/ui", follow_redirects=False).status_code == 200
    with app.state.db.session() as session:
        session.execute(update(ApiKey).values(revoked_at=utcnow()))
        session.commit()
    assert client.get("/ui", follow_redirects=False).status_code == 303
    assert client.get("/ui/jobs/rows").status_code == 401


def test_forms_need_the_session_csrf_token(app: Any, stories_model: Path, stories_text: Path) -> None:
    alice = signed_in(app, "alice")
    body = form(stories_model, stories_text)
    assert alice.post("/ui/submit", data=body).status_code == 403
    assert alice.post("/ui/submit", data={**body, "csrf": "0" * 64}).status_code == 403
    assert jobs_in_db(app) == []
    created = alice.post("/ui/submit", data={**body, "csrf": csrf_of(alice)}, follow_redirects=False)
    assert created.status_code == 303
    job_id = created.headers["location"].rsplit("/", 1)[-1]
    assert alice.post(f"/ui/jobs/{job_id}/cancel", data={"confirm": "yes"}).status_code == 403
    assert jobs_in_db(app)[0].state == "queued"
    bob = signed_in(app, "bob")
    # bob's token is not alice's
    assert alice.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf_of(bob)}).status_code == 403
    cancelled = alice.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf_of(alice)}, follow_redirects=False)
    assert cancelled.status_code == 303 and jobs_in_db(app)[0].state == "cancelled"
    again = alice.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf_of(alice)})
    assert again.status_code == 200 and jobs_in_db(app)[0].state == "cancelled"  # cancelling twice is harmless


def test_users_see_only_their_own_jobs(app: Any, stories_model: Path, stories_text: Path) -> None:
    alice, bob = signed_in(app, "alice"), signed_in(app, "bob")
    created = alice.post("/ui/submit", data={**form(stories_model, stories_text), "csrf": csrf_of(alice)},
                         follow_redirects=False)
    job_id = created.headers["location"].rsplit("/", 1)[-1]
    assert job_id in alice.get("/ui").text and job_id in alice.get("/ui/jobs/rows?state=queued").text
    timeline = re.search(r'<ol class="timeline">(.*?)</ol>', alice.get(f"/ui/jobs/{job_id}").text, re.S)[1]
    assert re.findall(r"<strong>([^<]+)</strong>", timeline) == ["submitted", "dispatched"]  # the job's events
    for path in ("/ui", "/ui?state=queued", "/ui/jobs/rows", "/ui/jobs/rows?state=queued"):
        page = bob.get(path)
        assert page.status_code == 200 and job_id not in page.text and job_id[:8] not in page.text
    for path in ("", "/live", "/artifact", "/manifest", "/files/comparison.svg"):
        response = bob.get(f"/ui/jobs/{job_id}{path}")
        assert response.status_code == 404 and str(stories_model) not in response.text, path
    cancel = bob.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": csrf_of(bob)})
    assert cancel.status_code == 404 and jobs_in_db(app)[0].state == "queued"


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"sparsity": "abc"}, "sparsity", "valid number"),
        ({"sparsity": "1"}, "sparsity", "less than 1"),
        ({"sparsity": "0.999"}, "sparsity", ""),  # infeasible for this model: preflight refuses it
        ({"model": "/etc"}, "model", "TWOSSP_ALLOWED_LOCAL_ROOTS"),
        ({"model": "not a model id"}, "model", "hub id"),
        ({"method": "nope"}, "method", "unknown method"),
        ({"options": "{not json"}, "options", "not valid JSON"),
        ({"options": '{"alpha": "x"}'}, "options", "alpha"),
        ({"calibration": "/etc/passwd"}, "calibration", "TWOSSP_ALLOWED_LOCAL_ROOTS"),
        ({"eval": "data.txt:5:2"}, "eval", "END"),
        ({"seq_len": "4"}, "seq_len", "greater than or equal to 8"),
        ({"kind": "sweep", "sparsities": "0.25"}, "methods", ""),
        ({"kind": "sweep", "methods": "2ssp", "sparsities": "0.25,2"}, "sparsities", "between 0 and 1"),
        ({"export": "portable", "method": "slicegpt"}, "export", "portable"),
        ({"heal": "on", "heal_options": '{"steps": 0}'}, "heal", "greater than or equal to 1"),
        ({"heal": "on", "heal_options": "steps=5"}, "heal", "not valid JSON"),
        ({"export_options": "[1]"}, "export_options", "must be a JSON object"),
        ({"export_options": '{"nope": 1}'}, "export_options", "nope"),
    ],
)
def test_bad_form_input_is_shown_next_to_its_field_and_creates_nothing(
    app: Any, stories_model: Path, stories_text: Path, fields: dict[str, str], field: str, message: str
) -> None:
    alice = signed_in(app, "alice")
    data = {**form(stories_model, stories_text, **fields), "csrf": csrf_of(alice)}
    response = alice.post("/ui/submit", data=data)
    assert response.status_code == 422
    error = re.search(rf'id="error-{field}" role="alert">([^<]*)<', response.text)
    assert error is not None, response.text[-3000:]
    assert message in error[1].replace("&#39;", "'")
    assert jobs_in_db(app) == []


def test_the_perplexity_chart_shows_healed_values_when_the_report_has_them() -> None:
    from api.ui.charts import perplexity_chart

    report = {"perplexity": [{"dataset": "a<b>", "dense": 6.0, "pruned": 50.0, "healed": 12.5},
                             {"dataset": "c", "dense": 7.0, "pruned": 40.0}]}
    svg = str(perplexity_chart(report))
    bars = re.findall(r'class="bar bar-(\w+)"[^>]*data-value="([\d.]+)"', svg)
    assert bars == [("dense", "6.0"), ("pruned", "50.0"), ("healed", "12.5"), ("dense", "7.0"), ("pruned", "40.0")]
    assert "a&lt;b&gt;" in svg and "a<b>" not in svg
    assert perplexity_chart({"perplexity": []}) is None


def test_a_heal_shows_its_loss_curve_and_summary() -> None:
    from api.ui.charts import loss_curve_chart
    from api.ui.views import report_tables

    heal = {"method": "kd", "params": "full", "steps": 3, "first_loss": 4.0, "loss": 2.5, "seconds": 12.0,
            "loss_curve": [[1, 4.0], [2, 3.0], [3, 2.5]]}
    svg = str(loss_curve_chart(heal))
    points = re.search(r'<polyline class="loss" points="([^"]+)"', svg)[1].split()
    ys = [float(p.split(",")[1]) for p in points]
    assert len(points) == 3 and ys[0] < ys[1] < ys[2]  # the loss falls: the line goes down the chart
    assert dict(report_tables({"heal": heal})["Heal"])["loss"] == "2.5"
    assert loss_curve_chart({"loss_curve": [[1, 4.0]]}) is None


def submitted(app: Any, stories_model: Path, stories_text: Path) -> tuple[TestClient, str]:
    """alice, signed in, and the id of the job she submitted through the form (queued: no worker here)."""
    alice = signed_in(app, "alice")
    created = alice.post("/ui/submit", data={**form(stories_model, stories_text), "csrf": csrf_of(alice)},
                         follow_redirects=False)
    return alice, created.headers["location"].rsplit("/", 1)[-1]


def set_job(app: Any, job_id: str, **values: Any) -> None:
    with app.state.db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        session.commit()


def test_the_job_page_names_the_worker_class_the_job_was_routed_to(
    app: Any, stories_model: Path, stories_text: Path
) -> None:
    alice, job_id = submitted(app, stories_model, stories_text)
    assert "worker class" not in alice.get(f"/ui/jobs/{job_id}").text  # embedded: not routed
    set_job(app, job_id, queue="large")
    assert "worker class <code>large</code>" in alice.get(f"/ui/jobs/{job_id}").text


def test_the_job_page_shows_the_report_s_warnings_and_the_heal_s_control(
    app: Any, stories_model: Path, stories_text: Path
) -> None:
    alice, job_id = submitted(app, stories_model, stories_text)
    warning = "the heal raised the pruned model's perplexity by over 1 % on 1 of 1 evaluation sets (a 20.000 -> 25.000)"
    report = {"method": "2ssp", "sparsity_target": 0.375, "warnings": [warning],
              "perplexity": [{"dataset": "a", "dense": 10.0, "pruned": 20.0, "healed": 25.0, "dense_healed": 11.5}]}
    set_job(app, job_id, state="succeeded", report=report)
    page = alice.get(f"/ui/jobs/{job_id}").text
    assert 'id="report-warnings"' in page and str(escape(warning)) in page
    assert "<th>Dense healed (control)</th>" in page and "<td>11.500</td>" in page
    set_job(app, job_id, report={k: v for k, v in report.items() if k != "warnings"})
    assert 'id="report-warnings"' not in alice.get(f"/ui/jobs/{job_id}").text


def test_a_finished_sweep_s_comparison_shows_each_row_s_warnings(
    app: Any, stories_model: Path, stories_text: Path
) -> None:
    alice, job_id = submitted(app, stories_model, stories_text)
    warning = "the heal raised the pruned model's perplexity by over 1 % on 1 of 1 evaluation sets (a 20.000 -> 25.000)"
    row = {"method": "2ssp", "sparsity_target": 0.375, "sparsity_achieved": 0.37, "speedup": None, "error": None,
           "perplexity": [{"dataset": "a", "dense": 10.0, "pruned": 20.0, "healed": 25.0}], "warnings": [warning]}
    set_job(app, job_id, kind="sweep", state="succeeded", report={"rows": [row], "dense": {"perplexity": []}})
    page = alice.get(f"/ui/jobs/{job_id}").text
    assert f'<span class="row-warning">warning: {escape(warning)}</span>' in page


def test_every_example_the_form_and_the_openapi_document_show_is_accepted(
    app: Any, stories_model: Path, stories_text: Path
) -> None:
    """The examples come from the registries; each one, submitted as shown (on the local model and text, as the
    tests have no hub access), is queued."""
    from html import unescape

    from twossp_core.plan.exports import format_names
    from twossp_core.plan.methods import method_names

    alice = signed_in(app, "alice")
    page = alice.get("/ui/submit").text
    select = {name: body for name, body in re.findall(r'<select id="(\w+)".*?>(.*?)</select>', page, re.S)}
    option = re.compile(r'<option [^>]*data-example="([^"]*)">([\w-]+)<')
    methods = {name: unescape(ex) for ex, name in option.findall(select["method"])}
    exports = {name: unescape(ex) for ex, name in option.findall(select["export"])}
    assert list(methods) == method_names() and list(exports) == format_names()
    assert all(methods.values()) and exports["gguf"]  # every method shows an example, and gguf's options
    placeholder = {name: unescape(value) for name, value in re.findall(r'id="(\w+)" name="\w+" rows="\d" '
                                                                       r'placeholder="([^"]*)"', page)}
    assert placeholder["options"] == methods["2ssp"]  # the selected method's example
    sweep_example = unescape(re.search(r'data-sweep-example="([^"]*)"', page)[1])

    shown: list[dict[str, str]] = [{"method": name, "options": ex} for name, ex in methods.items()]
    shown += [{"export": name, "export_options": ex} for name, ex in exports.items() if ex]
    shown.append({"heal": "on", "heal_options": placeholder["heal_options"]})
    shown.append({"kind": "sweep", "methods": list(json.loads(sweep_example)), "sparsities": "0.25",
                  "options": sweep_example})
    for fields in shown:
        data = {**form(stories_model, stories_text, **fields), "csrf": csrf_of(alice)}
        response = alice.post("/ui/submit", data=data, follow_redirects=False)
        assert response.status_code == 303, (fields, re.findall(r'role="alert">([^<]*)<', response.text))

    examples = TestClient(app).get("/openapi.json").json()["paths"]["/jobs"]["post"]["requestBody"]["content"][
        "application/json"]["examples"]
    assert {f"prune-{name}" for name in method_names()} | {"sweep", "export-gguf", "heal", "zero-shot"} <= set(examples)
    api = TestClient(app, headers={"Authorization": f"Bearer {key_for(app, 'erin')}"})
    local = {"model": str(stories_model), "calibration": [f"{stories_text}:0:50"], "eval": [f"{stories_text}:50:60"],
             "doc_separator": "<|endoftext|>", "seq_len": 128}
    for name, example in examples.items():
        response = api.post("/jobs", json={**example["value"], **local})
        assert response.status_code == 202, (name, response.text)


def test_small_things_a_user_sees(app: Any) -> None:
    """The icon browsers ask for; removed modules said as modules, not as a count; the heal chart's step labels
    inside the chart."""
    from api.ui.charts import loss_curve_chart
    from api.ui.views import report_tables

    icon = TestClient(app).get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert '<link rel="icon" href="/favicon.ico">' in TestClient(app).get("/ui/login").text

    removed = dict(report_tables({"removed_attention": [0], "removed_mlp": [], "removed_blocks": [3, 4]})[
        "Removed modules"])
    assert removed == {"removed attention": "modules [0]", "removed mlp": "none", "removed blocks": "blocks [3, 4]"}

    svg = str(loss_curve_chart({"method": "kd", "params": "full", "loss_curve": [[0, 3.0], [100, 2.0], [2000, 1.5]]}))
    width = float(re.search(r'viewBox="0 0 (\d+)', svg)[1])
    labels = re.findall(r'<text x="([\d.]+)"[^>]*text-anchor="(\w+)"[^>]*>step (\d+)<', svg)
    assert [(anchor, step) for _, anchor, step in labels] == [("start", "0"), ("end", "2000")]
    assert all(float(x) <= width for x, _, _ in labels)
