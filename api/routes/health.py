"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.schemas import Health, Readiness
from service import lifecycle

router = APIRouter(tags=["health"])


class QueueMismatch(Exception):
    """The database has queued jobs the broker does not hold."""


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    """Answered on the event loop: it needs no handler thread and no database connection."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency is unreachable"}},
    summary="Database, broker and artifact store are reachable, and the queue holds every queued job",
)
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks: dict[str, str] = {}

    def probe(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        try:
            fn()
            checks[name] = "ok"
        except QueueMismatch as exc:
            checks[name] = f"error: {exc}"
        except Exception as exc:
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]

    def db_check() -> None:
        with state.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def queue_check() -> None:
        with state.db.session() as session:
            held = state.broker.held(lifecycle.queued_queues(session))
            if held is None:
                return
            lost = lifecycle.unheld(session, held, state.settings.redispatch_unheld_after_s)
        if lost:
            raise QueueMismatch(
                f"{len(lost)} queued jobs are not in the broker (lost messages; the reaper publishes them again)"
            )

    probe("database", db_check)
    probe("broker", state.broker.check)
    probe("store", state.store.check)
    if checks["database"] == checks["broker"] == "ok":
        probe("queue", queue_check)
    ok = all(v == "ok" for v in checks.values())
    body = Readiness(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
