"""Dashboard pages. Every page resolves the signed-in user from the session cookie and then calls the same
job services as the JSON API (`list_jobs`, `get_job`, `submit_job`, `cancel_job`), which scope every lookup to
that user: another user's job is a 404 here exactly as in the API."""

from __future__ import annotations

import secrets
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from api.deps import (
    BrokerDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    record_failed_authentication,
    refuse_blocked_address,
    ui_rate_limit,
)
from api.errors import Conflict, NotFound, ServiceError
from api.routes.jobs import artifact as artifact_download
from api.routes.jobs import manifest as manifest_download
from api.services import jobs as service
from api.ui import auth, charts, forms, sweep, views
from service.db.models import TERMINAL_STATES, Job, JobState
from service.sweeps import models_of as sweep_models
from twossp_core.errors import TwosspError
from twossp_core.plan.exports import format_names

HERE = Path(__file__).parent
PAGE_SIZE = 50
TIMELINE_MAX = 1000  # events shown on a job page (a long sweep records two per stage of every run)
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(ui_rate_limit)])
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(fmt_duration=views.fmt_duration, fmt_time=views.fmt_time, duration_s=views.duration_s)
TERMINAL = {s.value for s in TERMINAL_STATES}


def mount_static(app: Any) -> None:
    """The dashboard's files under /ui/static, and the icon browsers ask for at /favicon.ico."""
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(HERE / "static" / "favicon.ico", media_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=86400"})


def page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, {"terminal": TERMINAL, **context}, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def not_found(request: Request, ui: auth.UiSession, message: str) -> HTMLResponse:
    return page(request, "error.html", {"ui": ui, "title": "Not found", "message": message}, 404)


async def form_data(request: Request) -> dict[str, list[str]]:
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise HTTPException(415, "expected a form (application/x-www-form-urlencoded)")
    return parse_qs((await request.body()).decode("utf-8", errors="replace"), keep_blank_values=True)


def _one(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[-1] if values else None


# ---- sign-in -------------------------------------------------------------------------------------------------
@router.get("/login")
def login_page(request: Request, session: SessionDep, next: str | None = None) -> Response:
    if auth.current_session(request, session) is not None:
        return RedirectResponse(auth.safe_next(next), 303)
    return _login_form(request, next, None, 200)


def _login_form(request: Request, next: str | None, error: str | None, status: int) -> HTMLResponse:
    token = auth.login_token(request)
    response = page(
        request, "login.html", {"ui": None, "csrf": token, "next": auth.safe_next(next), "error": error}, status
    )
    auth.set_login_cookie(response, request, token)
    return response


@router.post("/login")
async def login(request: Request, session: SessionDep) -> Response:
    form = await form_data(request)
    target = auth.safe_next(_one(form, "next"))
    if not auth.check_login_token(request, _one(form, "csrf")):
        return _login_form(request, target, "The sign-in form expired: please try again.", 403)
    await refuse_blocked_address(request)
    response = RedirectResponse(target, 303)
    if not auth.sign_in(session, (_one(form, "api_key") or "").strip(), response, request):
        await record_failed_authentication(request)  # the API's budget of failures per address: 429 once spent
        return _login_form(request, target, "Invalid API key.", 401)
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep) -> Response:
    ui = auth.require_session(request, session)
    auth.check_csrf(ui, _one(await form_data(request), "csrf"))
    response = RedirectResponse("/ui/login", 303)
    auth.sign_out(response, request)
    return response


# ---- jobs list -----------------------------------------------------------------------------------------------
def _state_filter(state: str | None) -> JobState | None:
    if not state:
        return None
    try:
        return JobState(state)
    except ValueError:
        raise HTTPException(422, f"state: must be one of {', '.join(s.value for s in JobState)}") from None


def _listing(session: Any, ui: auth.UiSession, state: str | None, offset: int) -> dict[str, Any]:
    """The user's top-level jobs (a sweep stands for its cells, as in `GET /jobs`), each sweep with its cells'
    summary."""
    rows, total = service.list_jobs(session, ui.user, _state_filter(state), PAGE_SIZE, max(offset, 0))
    return {"ui": ui, "jobs": rows, "total": total, "state": state or "", "offset": max(offset, 0),
            "page_size": PAGE_SIZE, "states": [s.value for s in JobState],
            "cell_summaries": sweep.summaries(session, rows)}


@router.get("")
def jobs_page(request: Request, session: SessionDep, state: str | None = None, offset: int = 0) -> Response:
    ui = auth.require_session(request, session)
    return page(request, "jobs.html", _listing(session, ui, state, offset))


@router.get("/jobs/rows")
def jobs_rows(request: Request, session: SessionDep, state: str | None = None, offset: int = 0) -> Response:
    """The table body alone, polled by the jobs page for live updates."""
    ui = auth.current_session(request, session)
    if ui is None:
        return Response("sign in again", status_code=401)
    return page(request, "job_rows.html", _listing(session, ui, state, offset))


# ---- submit --------------------------------------------------------------------------------------------------
def _submit_form(
    request: Request, ui: auth.UiSession, values: dict[str, Any], errors: dict[str, str], status: int = 200
) -> HTMLResponse:
    context = {
        "ui": ui, "values": values, "errors": errors, "general": errors.get(forms.GENERAL),
        "methods": forms.method_choices(), "form_id": values.get("form_id") or secrets.token_urlsafe(12),
        "export_formats": format_names(), "examples": forms.examples(), "tasks": forms.task_choices(),
    }
    return page(request, "submit.html", context, status)


@router.get("/submit")
def submit_page(request: Request, session: SessionDep) -> Response:
    ui = auth.require_session(request, session)
    defaults = {"kind": "prune", "method": "2ssp", "eval": "", "export": "compact", "measure_throughput": True,
                "methods": ["2ssp"]}
    return _submit_form(request, ui, defaults, {})


@router.post("/submit")
async def submit(
    request: Request, session: SessionDep, settings: SettingsDep, broker: BrokerDep
) -> Response:
    ui = auth.require_session(request, session)
    form = await form_data(request)
    auth.check_csrf(ui, _one(form, "csrf"))
    values: dict[str, Any] = {k: (v if k in forms.LIST_FIELDS else v[-1]) for k, v in form.items()}
    values["measure_throughput"] = _one(form, "measure_throughput") == "on"
    values["save_models"] = _one(form, "save_models") == "on"
    try:
        body = forms.request_body(form)
    except forms.FormError as exc:
        return _submit_form(request, ui, values, {exc.field: exc.message}, 422)
    form_id = (_one(form, "form_id") or "")[:100]
    key = f"ui-{form_id}" if form_id else None
    try:
        result = await run_in_threadpool(service.submit_job, session, broker, settings, ui.user, body, key)
    except (ServiceError, TwosspError) as exc:
        if isinstance(exc, ServiceError) and exc.status_code >= 500:
            raise
        return _submit_form(request, ui, values, forms.field_errors(exc), 422)
    return RedirectResponse(f"/ui/jobs/{result.job.id}", 303)


# ---- one job -------------------------------------------------------------------------------------------------
def _live(session: Any, ui: auth.UiSession, job: Job) -> dict[str, Any]:
    """What the status panel shows: the job (a sweep's stage and percent from its cells) and its timeline (from
    `GET /jobs/{id}/events`' own query)."""
    events, more = service.list_events(session, ui.user, job.id, 0, TIMELINE_MAX)
    summary = sweep.summaries(session, [job]).get(job.id)
    stage, progress = summary.shown(job) if summary is not None else (job.stage, job.progress)
    return {"ui": ui, "job": job, "events": views.timeline(job, events), "more_events": more, "stage": stage,
            "progress": progress}


def _job_context(session: Any, ui: auth.UiSession, job: Job, store: Any) -> dict[str, Any]:
    report = job.report if job.state == JobState.succeeded.value else None
    files = views.manifest_files(store, job)
    context: dict[str, Any] = {
        **_live(session, ui, job), "report": report, "files": files, "notice": None,
        "images": views.comparison_images(files, sweep_models(job.spec)) if job.kind == "sweep" else [],
        "spec_rows": views.options_rows(job.spec or {}),
    }
    if job.kind == "sweep":
        context.update(sweep.sweep_context(session, job))
    if report is not None:
        context["zero_shot"] = views.zero_shot_table(report)
    if report is not None and job.kind in ("prune", "cell"):  # a cell's report is its run's
        context["tables"] = views.report_tables(report)
        heal = report.get("heal") or {}
        chart_list = (charts.perplexity_chart(report), charts.throughput_chart(report), charts.loss_curve_chart(heal))
        context["charts"] = [c for c in chart_list if c]
    elif report is not None:
        context["tables"] = {"Timings": views.report_tables(report)["Timings"]}
        context["charts"] = charts.sweep_perplexity_charts(report)
        context["rows"] = report.get("rows") or []
    return context


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str, session: SessionDep, store: StoreDep) -> Response:
    ui = auth.require_session(request, session)
    try:
        job = service.get_job(session, ui.user, job_id)
    except NotFound as exc:
        return not_found(request, ui, str(exc))
    return page(request, "job.html", _job_context(session, ui, job, store))


def _polled_job(request: Request, session: Any, job_id: str) -> tuple[auth.UiSession, Job] | Response:
    """The signed-in user and their job for a fragment the page polls, or the plain-text answer when there is none
    (a fragment is swapped into a page, never a whole page of its own)."""
    ui = auth.current_session(request, session)
    if ui is None:
        return Response("sign in again", status_code=401)
    try:
        return ui, service.get_job(session, ui.user, job_id)
    except NotFound as exc:
        return Response(str(exc), status_code=404)


@router.get("/jobs/{job_id}/live")
def job_live(request: Request, job_id: str, session: SessionDep) -> Response:
    """The job's status panel alone (state, stage, progress, timeline), polled by the job page."""
    found = _polled_job(request, session, job_id)
    if isinstance(found, Response):
        return found
    ui, job = found
    return page(request, "job_live.html", _live(session, ui, job))


@router.get("/jobs/{job_id}/cells")
def cells_fragment(request: Request, job_id: str, session: SessionDep) -> Response:
    """A sweep's cells table and comparison so far alone, polled by the sweep's page."""
    found = _polled_job(request, session, job_id)
    if isinstance(found, Response):
        return found
    ui, job = found
    if job.kind != "sweep":
        return Response(f"job {job_id} is not a sweep", status_code=409)
    context = {"ui": ui, "job": job, "images": [], **sweep.sweep_context(session, job)}
    return page(request, "sweep_cells.html", context)


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, job_id: str, session: SessionDep, store: StoreDep) -> Response:
    ui = auth.require_session(request, session)
    auth.check_csrf(ui, _one(await form_data(request), "csrf"))
    try:
        service.cancel_job(session, ui.user, job_id)
    except NotFound as exc:
        return not_found(request, ui, str(exc))
    except Conflict as exc:
        context = _job_context(session, ui, service.get_job(session, ui.user, job_id), store)
        return page(request, "job.html", {**context, "notice": str(exc)}, 409)
    return RedirectResponse(f"/ui/jobs/{job_id}", 303)


@router.get("/jobs/{job_id}/artifact")
def artifact(
    request: Request, job_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep
) -> Response:
    """The same download as `GET /jobs/{id}/artifact` (a tar, or presigned URLs from S3)."""
    ui = auth.require_session(request, session)
    return artifact_download(job_id, session, ui.user, store, settings)


@router.get("/jobs/{job_id}/manifest")
def manifest(request: Request, job_id: str, session: SessionDep, store: StoreDep) -> Response:
    ui = auth.require_session(request, session)
    return manifest_download(job_id, session, ui.user, store)


@router.get("/jobs/{job_id}/files/{path:path}")
def artifact_image(request: Request, job_id: str, path: str, session: SessionDep, store: StoreDep) -> Response:
    """An image listed in a succeeded job's manifest (a sweep's comparison chart), shown inline."""
    ui = auth.require_session(request, session)
    try:
        job = service.get_job(session, ui.user, job_id)
    except NotFound as exc:
        return not_found(request, ui, str(exc))
    media = views.IMAGE_TYPES.get(PurePosixPath(path).suffix)
    if media is None or path not in {f["path"] for f in views.manifest_files(store, job)}:
        return not_found(request, ui, f"job {job_id} has no image {path!r}")
    data = store.get_bytes(f"{job.artifact['prefix']}/files/{path}")  # type: ignore[index]
    headers = {
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=3600",
    }
    return Response(data, media_type=media, headers=headers)
