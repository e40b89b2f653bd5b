"""`/metrics` cannot be inflated by anyone: the HTTP latency histogram's labels come from closed sets (known methods,
route templates, status classes, else `other` / `unmatched`), so made-up methods and paths add no series."""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import metrics
from api.app import create_app
from api.metrics import KNOWN_METHODS
from api.routes import health, jobs
from api.ui import routes as ui
from service.db.migrate import upgrade_head
from service.settings import Settings

SERIES_RE = re.compile(
    r'^twossp_http_request_duration_seconds_count\{method="([^"]*)",route="([^"]*)",status="([^"]*)"\}'
)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    settings = Settings(data_dir=tmp_path, embedded_worker=False, rate_limit_per_s=10_000, rate_limit_burst=10_000)
    upgrade_head(settings)
    application = create_app(settings)
    yield application
    application.state.db.dispose()


def series(client: TestClient) -> set[tuple[str, str, str]]:
    text = client.get("/metrics").text
    return {match.groups() for line in text.splitlines() if (match := SERIES_RE.match(line))}


def word(rng: random.Random, alphabet: str, low: int, high: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high)))


def random_request(rng: random.Random) -> tuple[str, str]:
    """A made-up method (or a known one) on a made-up path, alone or under a real route's prefix."""
    method = rng.choice([*KNOWN_METHODS, *(word(rng, string.ascii_uppercase, 3, 12) for _ in range(8))])
    segment = word(rng, string.ascii_letters + string.digits + "-._~%", 1, 24)
    path = rng.choice([f"/{segment}", f"/jobs/{segment}", f"/jobs/{segment}/{segment}x", f"/ui/{segment}x/y",
                       f"/{segment}/{segment}"])
    return method, path


@pytest.mark.slow
def test_random_methods_and_paths_add_no_series(app: Any) -> None:
    client = TestClient(app)
    # one request of each shape the random ones take: a made-up method and each known one, on each kind of path
    for method in [*KNOWN_METHODS, "MADEUP"]:
        for path in ("/nowhere", "/jobs/nope", "/jobs/nope/nopex", "/ui/nopex/y", "/a/b"):
            client.request(method, path)
    client.get("/metrics")
    before = series(client)

    rng = random.Random(24)
    statuses = set()
    for _ in range(1000):
        method, path = random_request(rng)
        statuses.add(client.request(method, path).status_code)
    after = series(client)

    assert len(after) == len(before), sorted(after - before)
    routers = [app.router, health.router, jobs.router, ui.router, metrics.router]
    routes = {route.path for router in routers for route in router.routes if hasattr(route, "path")} | {"unmatched"}
    for method, route, status in after:
        assert method in KNOWN_METHODS | {"other"}
        assert route in routes
        assert re.fullmatch(r"[1-5]xx", status)
    assert len(statuses) >= 2 and max(statuses) < 500, statuses  # 404, 405, 401: the requests got answers
