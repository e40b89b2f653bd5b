"""The dashboard in a real browser (headless Chromium driven by Playwright) against `twossp serve` with its
embedded worker and SQLite, on the real stories260k model; and `/metrics` scraped around a real job.

Set TWOSSP_UI_SCREENSHOTS=DIR to save screenshots of the main pages (docs/ui-*.png come from this test).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import unavailable
from .procs import Embedded, bare_env
from .support import job_body

pytestmark = pytest.mark.slow
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, test_data: Path) -> Iterator[Embedded]:
    serve = Embedded(tmp_path_factory.mktemp("ui"), bare_env([test_data]))
    yield serve
    serve.proc.stop()


@pytest.fixture(scope="module")
def sweep(server: Embedded, stories_model: Path, stories_text: Path) -> dict[str, Any]:
    """A real sweep (2ssp and shortgpt at 0.25), with /metrics scraped before, while queued, and after it."""
    body = job_body(stories_model, stories_text, kind="sweep", methods=["2ssp", "shortgpt"], sparsities=[0.25])
    del body["sparsity"]
    before = scrape(server.base)
    response = server.api.submit(body)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    pending = scrape(server.base)
    job = server.api.wait_done(job_id, timeout=120)
    assert job["state"] == "succeeded", job
    return {"id": job_id, "job": job, "before": before, "pending": pending, "after": scrape(server.base)}


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def new_key(serve: Embedded, name: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "keys", "create", name],
        cwd=serve.cwd, env=serve.env, capture_output=True, text=True, check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable(f"playwright not installed: {exc}")
    path = os.environ.get("TWOSSP_TEST_CHROMIUM") or next(
        (found for name in CHROMIUM_CANDIDATES if (found := shutil.which(name))), None
    )
    if not path:
        unavailable("no Chromium found (apt-get install chromium, or set TWOSSP_TEST_CHROMIUM)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


def sign_in(browser: Any, base: str, key: str) -> Any:
    context = browser.new_context(viewport={"width": 1180, "height": 820}, accept_downloads=True)
    page = context.new_page()
    page.goto(f"{base}/ui")
    assert "/ui/login" in page.url  # not signed in: sent to the sign-in form
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/ui")
    return page


def shoot(page: Any, name: str, full_page: bool = False, clip_height: int | None = None) -> None:
    folder = os.environ.get("TWOSSP_UI_SCREENSHOTS")
    if folder:
        clip = {"x": 0, "y": 0, "width": 1180, "height": clip_height} if clip_height else None
        page.screenshot(path=str(Path(folder) / f"ui-{name}.png"), full_page=full_page or bool(clip), clip=clip)


def fill_job(page: Any, model: Path, text: Path, sparsity: str) -> None:
    page.fill("#model", str(model))
    page.select_option("#method", "2ssp")
    page.fill("#sparsity", sparsity)
    page.fill("#calibration", f"{text}:0:500")
    page.fill("#eval", f"{text}:500:520")
    page.fill("#doc_separator", "<|endoftext|>")
    page.fill("#seq_len", "512")
    page.fill("#calibration_windows", "8")


def test_dashboard_in_a_browser(
    server: Embedded, sweep: dict[str, Any], chromium: Any, stories_model: Path, stories_text: Path
) -> None:
    base = server.base
    alice = sign_in(chromium, base, server.key)
    assert alice.locator("tr.job").count() == 1  # the sweep

    # bad input: the API's message next to the field, nothing created
    alice.click("text=New job")
    # the options fields show the example of what is selected (from the registries)
    from api.examples import export_examples, method_examples

    alice.select_option("#method", "shortgpt")
    assert json.loads(alice.get_attribute("#options", "placeholder")) == method_examples()["shortgpt"]
    alice.select_option("#export", "gguf")
    assert json.loads(alice.get_attribute("#export_options", "placeholder")) == export_examples()["gguf"]
    alice.select_option("#export", "compact")
    fill_job(alice, stories_model, stories_text, "1.5")
    alice.click("#submit-form button[type=submit]")
    assert "less than 1" in alice.locator("#error-sparsity").inner_text()
    assert alice.input_value("#model") == str(stories_model)  # the form keeps what was typed
    alice.fill("#sparsity", "0.375")
    alice.fill("#model", str(stories_model.parent / "no-such-model"))
    alice.click("#submit-form button[type=submit]")
    assert "no such model directory" in alice.locator("#error-model").inner_text()
    shoot(alice, "submit-error", full_page=True)
    assert server.api.http.get("/jobs").json()["total"] == 1

    # a real job through the form; the page follows it live to the end
    alice.fill("#model", str(stories_model))
    alice.click("#submit-form button[type=submit]")
    alice.wait_for_url(f"{base}/ui/jobs/*")
    job_id = alice.url.rsplit("/", 1)[-1]
    assert alice.locator("#job-state").inner_text() in {"queued", "running"}  # not finished when first shown
    listing = alice.context.new_page()
    listing.goto(f"{base}/ui")
    row = listing.locator(f"tr[data-job-id='{job_id}']")
    assert row.count() == 1
    alice.locator("#job-state", has_text="succeeded").wait_for(timeout=90_000)  # polled, then the page reloads
    listing.locator(f"tr[data-job-id='{job_id}'][data-state='succeeded']").wait_for(timeout=10_000)
    assert listing.locator(f"tr[data-job-id='{job_id}'] progress").get_attribute("value") == "100.0"
    job = server.api.job(job_id)
    assert job["state"] == "succeeded"

    alice.locator("svg.chart-perplexity").wait_for()
    bars = alice.locator("svg.chart-perplexity rect.bar")
    assert {b.get_attribute("class") for b in bars.all()} == {"bar bar-dense", "bar bar-pruned"}
    values = sorted(float(b.get_attribute("data-value")) for b in bars.all())
    entry = job["report"]["perplexity"][0]
    assert values == pytest.approx(sorted([entry["dense"], entry["pruned"]]))
    assert alice.locator("svg.chart-throughput rect.bar").count() == 2
    assert "blocks after" in alice.locator("table.report-parameters").inner_text()
    timeline = alice.locator("ol.timeline").inner_text()
    assert "submitted" in timeline and "stage stage1 took" in timeline and "succeeded" in timeline
    assert "running" not in timeline  # every stage that started also finished
    sha = alice.locator("#manifest-sha256").inner_text()
    assert sha == job["artifact"]["manifest_sha256"]
    shoot(alice, "job", clip_height=1640)
    with alice.expect_download() as info:
        alice.click("#download")
    with tarfile.open(info.value.path()) as tar:
        manifest = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
    assert hashlib.sha256(manifest).hexdigest() == sha
    assert {"config.json", "report.json"} <= {Path(f["path"]).name for f in json.loads(manifest)["files"]}
    listing.reload()
    shoot(listing, "jobs")

    # a second user sees none of it
    bob_key = new_key(server, "bob")
    bob = sign_in(chromium, base, bob_key)
    assert bob.locator("tr.job").count() == 0 and job_id not in bob.content()
    response = bob.goto(f"{base}/ui/jobs/{job_id}")
    assert response.status == 404 and "not found" in bob.content()
    for path in ("live", "artifact", "manifest", "files/report.json"):
        assert bob.request.get(f"{base}/ui/jobs/{job_id}/{path}").status == 404
    bob.goto(f"{base}/ui?state=succeeded")
    assert bob.locator("tr.job").count() == 0

    # a sweep shows the comparison chart the sweep artifact holds, and pruned against dense per run
    alice.goto(f"{base}/ui/jobs/{sweep['id']}")
    image = alice.locator("figure.comparison img")
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    assert alice.locator("svg.chart-perplexity rect.bar-pruned").count() == 2
    assert alice.locator("table.comparison td", has_text="shortgpt").count() == 1
    shoot(alice, "sweep", clip_height=1500)


def test_metrics_follow_a_job(server: Embedded, sweep: dict[str, Any]) -> None:
    before, pending, after = sweep["before"], sweep["pending"], sweep["after"]

    def jobs(scraped: dict[Any, float], state: str) -> float:
        return scraped.get(("twossp_jobs", (("kind", "sweep"), ("state", state))), 0.0)

    assert jobs(pending, "queued") + jobs(pending, "running") == jobs(before, "queued") + jobs(before, "running") + 1
    assert jobs(after, "succeeded") == jobs(before, "succeeded") + 1
    assert jobs(after, "queued") == jobs(after, "running") == 0
    durations = ("twossp_job_duration_seconds_count", (("method", "sweep"), ("state", "succeeded")))
    assert after[durations] == before.get(durations, 0) + 1
    # each cell's stages count under its method (the sweep's summed timings are not counted again)
    for method, stage in (("2ssp", "stage1"), ("shortgpt", "influence"), ("2ssp", "evaluate_dense"),
                          ("shortgpt", "evaluate_dense")):
        key = ("twossp_stage_duration_seconds_count", (("method", method), ("stage", stage)))
        assert after[key] == before.get(key, 0) + 1, key
    assert after[("twossp_queue_depth", ())] == 0 and after[("twossp_outbox_pending", ())] == 0
    latency = (
        "twossp_http_request_duration_seconds_count", (("method", "POST"), ("route", "/jobs"), ("status", "2xx"))
    )
    assert after[latency] >= 1


def test_the_api_docs_render_offline_and_try_it_out(server: Embedded, chromium: Any) -> None:
    """/docs in a real browser: Swagger UI reads the OpenAPI 3.1 document from this server alone, lists the
    operations, and "Try it out" on GET /jobs answers 200 with the key given to "Authorize"."""
    page = chromium.new_page()
    elsewhere: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(server.base):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(f"{server.base}/docs")
    page.locator(".opblock").first.wait_for(timeout=30_000)
    paths = {p.strip().replace("\u200b", "") for p in page.locator(".opblock-summary-path").all_inner_texts()}
    assert {"/jobs", "/jobs/{job_id}", "/healthz"} <= paths, paths
    assert page.locator(".errors-wrapper").count() == 0  # e.g. "does not specify a valid version field"
    assert elsewhere == []  # nothing from a CDN

    list_jobs = page.locator(".opblock-get", has=page.locator(".opblock-summary-path[data-path='/jobs']"))
    list_jobs.locator(".opblock-summary").first.click()
    list_jobs.locator("button.try-out__btn").click()
    list_jobs.locator("button.execute").click()
    status = list_jobs.locator(".live-responses-table .response .response-col_status").first
    assert status.inner_text(timeout=10_000).strip() == "401"  # no key yet

    page.locator(".auth-wrapper button.authorize").click()
    page.locator(".modal-ux input").first.fill(server.key)
    page.locator(".modal-ux .auth-btn-wrapper button.authorize").click()
    page.locator(".modal-ux button.btn-done").click()
    list_jobs.locator("button.execute").click()
    status.filter(has_text="200").wait_for(timeout=10_000)
    body = json.loads(list_jobs.locator(".live-responses-table .response-col_description pre").first.inner_text())
    assert body["total"] == server.api.http.get("/jobs").json()["total"] and "items" in body
    shoot(page, "api-docs")
