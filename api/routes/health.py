"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.schemas import Health, Readiness, WorkerClassReadiness
from service import lifecycle
from service.workers import ClassStatus, class_statuses

router = APIRouter(tags=["health"])


class QueueMismatch(Exception):
    """The database has queued jobs the broker does not hold, or jobs queued for a class with no live worker."""


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Health:
    """Answered on the event loop: it needs no handler thread and no database connection."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "a dependency is unreachable"}},
    summary="Database, broker and artifact store are reachable, the queue holds every queued job, and every queued "
    "job's worker class has a live worker",
)
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks: dict[str, str] = {}
    classes: list[ClassStatus] = []

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

    def workers_check() -> None:
        settings = state.settings
        with state.db.session() as session:
            classes.extend(class_statuses(session, settings.worker_expiry_s, settings.celery_queue))
        unserved = [c for c in classes if c.queued and not c.live_workers]
        if not unserved:
            return
        waiting = ", ".join(f"{c.queued} in '{c.queue}' (oldest {c.oldest_queued_s:.0f} s)" for c in unserved)
        if any(c.live_workers for c in classes):
            then = (f"re-routed to a live class that holds them, or failed, {settings.worker_class_grace_s:g} s "
                    "after their class's last worker")
        else:
            then = "they wait until a worker advertises"
        raise QueueMismatch(f"queued jobs whose worker class has no live worker: {waiting}; {then}")

    probe("database", db_check)
    probe("broker", state.broker.check)
    probe("store", state.store.check)
    if checks["database"] == checks["broker"] == "ok":
        probe("queue", queue_check)
    if checks["database"] == "ok" and state.broker.kind != "embedded":
        probe("workers", workers_check)
    ok = all(v == "ok" for v in checks.values())
    body = Readiness(
        status="ok" if ok else "unavailable", checks=checks,
        classes={c.queue: WorkerClassReadiness(live_workers=c.live_workers, queued=c.queued,
                                               oldest_queued_s=c.oldest_queued_s) for c in classes},
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
