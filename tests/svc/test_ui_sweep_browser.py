"""A sweep's page in a real browser (headless Chromium driven by Playwright) against the app served by uvicorn on
SQLite with no worker: the cells table and the comparison chart follow the cells as they end (polled), the page
shows the artifact's chart once the comparison is written, and a cell's page leads back to its sweep. The cells move
through the service's lifecycle as a worker would move them.

Set TWOSSP_UI_SCREENSHOTS=DIR to save a screenshot of the running sweep's page (docs/ui-sweep-live.png)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.db.models import JobState
from worker.sweeps import write_comparison_if_ready

from .support import free_port
from .test_ui_browser import chromium, shoot  # noqa: F401  (the browser fixture)
from .test_ui_sweep import Dashboard, report, sweep_body

pytestmark = pytest.mark.slow


@pytest.fixture
def served(app: Any) -> Iterator[str]:
    """The app on a loopback port, served by uvicorn in a thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_a_sweep_page_follows_its_cells_in_a_browser(
    app: Any, served: str, chromium: Any, stories_model: Path, stories_text: Path  # noqa: F811
) -> None:
    alice = Dashboard(app, "alice")
    parent_id = alice.submit(sweep_body(stories_model, stories_text, ["2ssp", "shortgpt"], [0.25, 0.375, 0.5]))
    cells = alice.cells(parent_id)
    for i, ratio in ((0, 1.5), (1, 2.5), (3, 3.25)):
        alice.finish(alice.start(cells[i]), JobState.succeeded,
                     report=report(cells[i].method, cells[i].sparsity, ratio))
    alice.finish(alice.start(cells[4]), JobState.failed, error="InfeasibleTarget: no such target")
    running = alice.start(cells[2], "2ssp@0.5/evaluate_pruned", 42.0)

    context = chromium.new_context(viewport={"width": 1180, "height": 820})
    page = context.new_page()
    page.goto(f"{served}/ui/login")
    page.fill("#api_key", alice.key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{served}/ui")
    sweep_row = page.locator(f"tr.job[data-job-id='{parent_id}']")
    assert "4/6 cells done" in sweep_row.inner_text() and page.locator("tr.job").count() == 1
    sweep_row.locator("a").first.click()
    page.wait_for_url(f"{served}/ui/jobs/{parent_id}")

    rows = page.locator("table.cells tr.cell")
    assert rows.count() == 6
    assert [r.get_attribute("data-state") for r in rows.all()] == [
        "succeeded", "succeeded", "running", "succeeded", "failed", "queued"]
    assert page.locator("svg.chart-held-out circle.point").count() == 3
    assert "42.0%" in rows.nth(2).inner_text()
    shoot(page, "sweep-live", clip_height=1180)

    # the cells end while the page is open: the polled table and chart follow, then the page reloads when the
    # comparison is written and shows the artifact's chart
    alice.finish(running, JobState.succeeded, report=report("2ssp", 0.5, 6.0))
    page.locator(f"tr.cell[data-cell-id='{cells[2].id}'][data-state='succeeded']").wait_for(timeout=15_000)
    assert page.locator("svg.chart-held-out circle.point").count() == 4
    assert page.locator("svg.chart-held-out polyline.method-line[data-method='2ssp']").count() == 1
    alice.finish(alice.start(cells[5]), JobState.succeeded, report=report("shortgpt", 0.5, 9.0))
    assert write_comparison_if_ready(app.state.db, app.state.store, app.state.settings, parent_id, "w:2") == (
        "succeeded")
    page.locator("#job-state", has_text="succeeded").wait_for(timeout=15_000)
    image = page.locator("figure.comparison img")
    image.wait_for(timeout=15_000)
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.locator("#partial-comparison").count() == 0
    assert [r.get_attribute("data-state") for r in rows.all()] == ["succeeded"] * 4 + ["failed", "succeeded"]

    # a cell's page, and back to its sweep
    rows.nth(4).locator("a").click()
    page.wait_for_url(f"{served}/ui/jobs/{cells[4].id}")
    assert "InfeasibleTarget" in page.locator("#live").inner_text()
    page.click("#parent-sweep")
    page.wait_for_url(f"{served}/ui/jobs/{parent_id}")
    context.close()
