"""Schemathesis against /openapi.json: generated requests for every operation (a few hundred in all) must get
no server error, and every response must match the documented status codes, content types and schemas."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.app import create_app
from service.broker import EmbeddedBroker
from service.db.session import Database
from service.keys import create_key
from service.settings import Settings

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
EXAMPLES_PER_OPERATION = 20  # per generation mode (valid and invalid data)


def test_generated_requests_get_no_server_error_and_match_the_schema(
    tmp_path: Path, pg_url: str, test_data: Path
) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    config = Settings(
        data_dir=tmp_path / "d", database_url=pg_url, allowed_local_roots=[test_data],
        rate_limit_per_s=10_000, rate_limit_burst=10_000, max_active_jobs_per_user=100_000,
    )
    app = create_app(config, broker=EmbeddedBroker())  # no worker: accepted jobs stay queued
    db = Database(config)
    with db.session() as session:
        headers = {"Authorization": f"Bearer {create_key(session, 'fuzz')}"}
    db.dispose()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checks = [
        schemathesis.checks.not_a_server_error,
        schemathesis.checks.status_code_conformance,
        schemathesis.checks.content_type_conformance,
        schemathesis.checks.response_headers_conformance,
        schemathesis.checks.response_schema_conformance,
    ]
    cases = 0
    from schemathesis.generation.modes import GenerationMode

    def fuzz(operation, mode) -> None:  # type: ignore[no-untyped-def]
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case) -> None:  # type: ignore[no-untyped-def]
            nonlocal cases
            cases += 1
            case.call_and_validate(headers=headers, checks=checks)  # raises on any failed check

        try:
            run()
        except Unsatisfiable:  # no invalid request exists for this operation (e.g. no parameters at all)
            assert mode == GenerationMode.NEGATIVE

    for result in schema.get_all_operations():
        for mode in GenerationMode:
            fuzz(result.ok(), mode)
    print(f"schemathesis: {cases} generated requests")
    assert cases >= 200
