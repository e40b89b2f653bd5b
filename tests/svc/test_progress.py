"""A job of every method, watched over HTTP while it runs on the real model: the stage and the percent advance
through the method's own stages (declared in the method registry), never go back, and end at 100 %."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from twossp_core.plan.methods import method_entry, method_names
from twossp_core.plan.stages import MEASURE, SETUP

from .procs import TERMINAL, Embedded, bare_env
from .support import job_body

pytestmark = pytest.mark.slow

FAST_OPTIONS = {
    "evopress": {"generations": 2, "offspring": 2, "initial_candidates": 2, "initial_tokens": 32,
                 "selection_tokens": [32, 64], "selection_survivors": [2, 1]},
}


@pytest.fixture
def serve(tmp_path: Path, test_data: Path) -> Iterator[Embedded]:
    # a heartbeat every 0.2 s: the short jobs below are seen in several stages while they run
    server = Embedded(tmp_path, bare_env([test_data], TWOSSP_HEARTBEAT_INTERVAL_S="0.2"))
    yield server
    server.proc.stop()


def test_every_method_advances_through_its_own_stages(serve: Embedded, stories_model: Path, stories_text: Path) -> None:
    methods = method_names()
    assert len(methods) >= 6
    ids = {}
    for method in methods:
        body = job_body(stories_model, stories_text, method=method, sparsity=0.25, options=FAST_OPTIONS.get(method, {}),
                        calibration_windows=4, eval=[f"{stories_text}:500:600"])
        response = serve.api.submit(body)
        assert response.status_code == 202, response.text
        ids[method] = response.json()["id"]

    # watch every job while the embedded worker runs them one after the other
    seen: dict[str, list[tuple[str, str | None, float]]] = {m: [] for m in methods}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        jobs = {j["id"]: j for j in serve.api.http.get("/jobs", params={"limit": 100}).json()["items"]}
        for method, job_id in ids.items():
            job = jobs[job_id]
            seen[method].append((job["state"], job["stage"], job["progress"]))
        if all(jobs[i]["state"] in TERMINAL for i in ids.values()):
            break
        time.sleep(0.05)

    for method, job_id in ids.items():
        job = serve.api.job(job_id)
        assert job["state"] == "succeeded", (method, job["error"])
        assert job["progress"] == 100.0
        own = [s.name for s in method_entry(method).stages]
        plan = [s.name for s in SETUP] + own + [s.name for s in MEASURE] + ["export", "upload"]

        # over HTTP while it ran: percent never went back, and every stage shown is one of the plan's
        percents = [p for _, _, p in seen[method]]
        assert percents == sorted(percents), (method, seen[method])
        running = [(stage, p) for state, stage, p in seen[method] if state == "running" and stage is not None]
        assert running and {stage for stage, _ in running} <= set(plan), (method, running)

        # the history: every stage of the plan ran, in order, each starting at a higher percent than the one before,
        # and each of the method's own stages moved the percent (no freeze at the start of pruning)
        events = serve.api.events(job_id, limit=50)
        started = [e for e in events if e["kind"] == "stage_started"]
        finished = [e for e in events if e["kind"] == "stage_finished"]
        ran = [e["stage"] for e in started]
        assert ran == [e["stage"] for e in finished], (method, events)
        remaining = iter(plan)  # in the plan's order; a stage the plan lists twice may run only once
        assert all(stage in remaining for stage in ran) and set(ran) == set(plan), (method, ran, plan)
        at_start = [e["data"]["percent"] for e in started]
        assert at_start == sorted(set(at_start)), (method, at_start)
        for start, end in zip(started, finished, strict=True):
            if start["stage"] in own:
                assert end["data"]["percent"] > start["data"]["percent"], (method, start, end)
        assert finished[-1]["stage"] == "upload" and finished[-1]["data"]["percent"] == 100.0
