"""Job endpoints: submit, get, list, cancel, history (events), download the artifact and its manifest."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.archive import stream_tar
from api.deps import BrokerDep, SessionDep, SettingsDep, StoreDep, UserDep, spend_more
from api.errors import Conflict, InputRejected
from api.schemas import (
    Comparison,
    JobEventOut,
    JobEventPage,
    JobOut,
    JobPage,
    PresignedArtifact,
    PresignedFile,
    SweepCells,
)
from api.services import jobs as service
from service.db.models import JobKind, JobState
from twossp_core.plan.spec import PruneSpec, SweepSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])
MAX_OFFSET = 1_000_000_000


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest

def requested_cells(body: Any) -> int:
    """How many cells a sweep request asks for (methods x distinct sparsities; 1 for anything else), as the rate limit
    counts them before the request is validated."""
    if not isinstance(body, dict) or body.get("kind") != JobKind.sweep.value:
        return 1
    methods, sparsities = body.get("methods", ["all"]), body.get("sparsities")
    models = body.get("models")
    several = len(set(models)) if isinstance(models, list) and all(isinstance(m, str) for m in models) else 1
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if not isinstance(methods, list) or not isinstance(sparsities, list):
        return 1
    if "all" in methods:
        from twossp_core.plan.methods import method_names

        methods = method_names()
    try:
        return max(1, several * len(set(methods)) * len(set(sparsities)))
    except TypeError:  # unhashable entries: the validation refuses the request
        return 1


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    404: {"description": "no such job for this user"},
}
_DETAIL = {"content": {"application/json": {"schema": {"properties": {"detail": {"type": "string"}}}}}}


def _request_schema(kind: JobKind) -> dict[str, Any]:
    """The core's spec schema plus the `kind` discriminator (`prune` is the default and may be left out)."""
    spec_cls = SweepSpec if kind is JobKind.sweep else PruneSpec
    schema = spec_cls.model_json_schema()
    kind_schema: dict[str, Any] = {"type": "string", "const": kind.value, "title": "Kind"}
    if kind is JobKind.prune:
        kind_schema["default"] = kind.value
    else:
        schema["required"] = ["kind", *schema.get("required", [])]
        # the validator also takes the methods as one comma-separated string ("2ssp,shortgpt"); sparsities are
        # numbers, so a JSON array of them
        props = schema["properties"]
        for name in ("methods",):
            array = {k: v for k, v in props[name].items() if k not in ("title", "description", "default")}
            props[name] = {
                "anyOf": [array, {"type": "string", "description": "comma-separated"}],
                **{k: v for k, v in props[name].items() if k in ("title", "description", "default")},
            }
    schema["properties"] = {"kind": kind_schema, **schema["properties"]}
    schema["title"] = f"{kind.value.capitalize()}JobRequest"
    return schema


# the body is validated by the core's parse_spec / parse_sweep_spec (one validator for CLI, API and worker)
SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [_request_schema(JobKind.prune), _request_schema(JobKind.sweep)]}}
        },
    }
}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a pruning job or a sweep (methods x sparsities)",
    description=(
        "`kind` selects the job: `prune` (the default) prunes one model with one method to one sparsity; "
        "`sweep` runs every method at every sparsity on one model and reports the comparison: it is a parent job "
        "with one `cell` job per method and sparsity, each routed by its own memory plan and run on any worker "
        "(`cells` on the sweep; its quotas and rate limit count the cells). "
        "The request is validated and preflighted before anything is queued."
    ),
    openapi_extra=SUBMIT_BODY,
    responses={
        200: {"model": JobOut, "description": "replay of an earlier request with the same Idempotency-Key"},
        401: ERRORS[401],
        413: {"description": "request body too large", **_DETAIL},
        422: {"description": "invalid, unsupported or infeasible request; nothing was queued", **_DETAIL},
    },
)
async def submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    broker: BrokerDep,
    user: UserDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    raw = await request.body()
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise InputRejected(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputRejected(f"request body nests deeper than {settings.max_json_depth} levels") from None
    if json_depth(body) > settings.max_json_depth:
        raise InputRejected(f"request body nests deeper than {settings.max_json_depth} levels")
    await spend_more(request, min(requested_cells(body), settings.max_sweep_runs) - 1)
    result = await run_in_threadpool(service.submit_job, session, broker, settings, user, body, idempotency_key)
    out = JobOut.from_row(result.job, service.sweep_cells(session, [result.job]).get(result.job.id))
    headers = {"Location": out.links.self}
    if not result.created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(out.model_dump(mode="json"), status_code=202 if result.created else 200, headers=headers)


@router.get("", response_model=JobPage, summary="List your jobs, newest first", responses={401: ERRORS[401]})
def list_jobs(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: UserDep,
    state: JobState | None = None,
    kind: JobKind | None = None,
    parent_id: Annotated[
        str | None, Query(max_length=36, description="list this sweep's cells (without it, and unless `kind=cell`, "
                          "cells are left out: their sweep stands for them)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobPage:
    limit = min(limit, settings.page_size_max)
    rows, total = service.list_jobs(session, user, state, limit, offset, kind, parent_id)
    nxt = None
    if offset + len(rows) < total:
        params = {"limit": str(limit), "offset": str(offset + limit)}
        if state is not None:
            params["state"] = state.value
        if kind is not None:
            params["kind"] = kind.value
        if parent_id is not None:
            params["parent_id"] = parent_id
        nxt = str(request.url.include_query_params(**params))
    cells = service.sweep_cells(session, rows)
    return JobPage(items=[JobOut.from_row(j, cells.get(j.id)) for j in rows], total=total, limit=limit, offset=offset,
                   next=nxt)


@router.get("/{job_id}", response_model=JobOut, summary="A job's state, progress and report", responses=ERRORS)
def get_job(job_id: str, session: SessionDep, user: UserDep) -> JobOut:
    job = service.get_job(session, user, job_id)
    return JobOut.from_row(job, service.sweep_cells(session, [job]).get(job.id))


@router.get(
    "/{job_id}/comparison",
    response_model=Comparison,
    summary="A sweep's comparison as it stands, while its cells run and after",
    description=(
        "The rows of the cells that ended so far, in the sweep's order (a cell that failed or was cancelled is a row "
        "with its `error`), and whether every cell ended. `format=markdown` answers comparison.md's table of them "
        "(text/markdown). The sweep's artifact holds the final comparison (JSON, Markdown, plot) once it succeeded."
    ),
    responses={
        **ERRORS,
        200: {"content": {"text/markdown": {"schema": {"type": "string"}}}},
        409: {"description": "the job is not a sweep", **_DETAIL},
    },
)
def comparison(
    job_id: str, session: SessionDep, user: UserDep,
    format: Annotated[str, Query(pattern="^(json|markdown)$")] = "json",
) -> Response:
    from service.sweeps import cell_context, contexts, models_of
    from service.sweeps import comparison as rows_of

    job = service.get_job(session, user, job_id)
    cells = service.sweep_cells(session, [job]).get(job.id)
    if job.kind != JobKind.sweep.value or not cells:
        raise Conflict(f"job {job_id} is not a sweep with cells")
    rows, complete = rows_of(job.spec, cells)
    models = models_of(job.spec)
    by_model = {model: c["dense"] for model, c in contexts(cells).items()} if len(models) > 1 else None
    context = cell_context(cells)
    dense = context["dense"] if context and by_model is None else None
    if format == "markdown":
        from twossp_core.report_table import comparison_markdown

        tables = [
            comparison_markdown([{k: v for k, v in r.items() if k != "model"} for r in rows if r.get("model") == m],
                                (by_model or {}).get(m) or {"perplexity": []}, title=f"Comparison on {m}")
            for m in models
        ] if by_model is not None else [
            comparison_markdown(rows, dense or {"perplexity": []}, title=f"Comparison on {job.model}")
        ]
        return Response("\n\n".join(tables), media_type="text/markdown")
    body = Comparison(complete=complete, rows=rows, dense=dense, dense_by_model=by_model, cells=SweepCells.of(cells))
    return JSONResponse(body.model_dump(mode="json"))


@router.get(
    "/{job_id}/events",
    response_model=JobEventPage,
    summary="A job's history, oldest first: transitions, attempts, stage starts and ends",
    description=(
        "Cursor-paginated: `next` is set while more events follow. Events are append-only: to follow a running "
        "job, call again with `after` = the last `id` you have."
    ),
    responses=ERRORS,
)
def events(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: UserDep,
    after: Annotated[int, Query(ge=0, description="return events recorded after this event id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobEventPage:
    limit = min(limit, settings.page_size_max)
    rows, more = service.list_events(session, user, job_id, after, limit)
    cursor = rows[-1].id if rows else after
    nxt = str(request.url.include_query_params(after=str(cursor), limit=str(limit))) if more else None
    return JobEventPage(items=[JobEventOut.from_row(e) for e in rows], next=nxt)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    status_code=202,
    summary="Cancel a queued or running job (a sweep: every cell of it)",
    responses={**ERRORS, 409: {"description": "the job already finished", **_DETAIL}},
)
def cancel(job_id: str, session: SessionDep, user: UserDep) -> JobOut:
    job = service.cancel_job(session, user, job_id)
    return JobOut.from_row(job, service.sweep_cells(session, [job]).get(job.id))


def _succeeded(session: SessionDep, user: UserDep, job_id: str):  # type: ignore[no-untyped-def]
    job = service.get_job(session, user, job_id)
    if job.state != JobState.succeeded.value or not job.artifact:
        raise Conflict(f"job {job_id} is {job.state}; artifacts exist only for succeeded jobs")
    return job


@router.get(
    "/{job_id}/manifest",
    summary="The artifact manifest (files, sizes, sha256)",
    responses={**ERRORS, 409: {"description": "the job has not succeeded", **_DETAIL}},
)
def manifest(job_id: str, session: SessionDep, user: UserDep, store: StoreDep) -> Response:
    job = _succeeded(session, user, job_id)
    return Response(store.get_bytes(job.artifact["manifest_key"]), media_type="application/json")


@router.get(
    "/{job_id}/artifact",
    summary="Download the job's output (the pruned model, or a sweep's comparison files)",
    description=(
        "Local store: a streamed tar (`manifest.json` + `model/...`). S3 store: JSON with short-lived presigned "
        "URLs for the manifest and every file. A sweep's output holds comparison.json, comparison.md, "
        "comparison.png, comparison.svg, sweep.json and runs/<method>-<sparsity>/report.json."
    ),
    responses={
        **ERRORS,
        200: {
            "content": {
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": PresignedArtifact.model_json_schema()},
            }
        },
        409: {"description": "the job has not succeeded", **_DETAIL},
    },
)
def artifact(job_id: str, session: SessionDep, user: UserDep, store: StoreDep, settings: SettingsDep) -> Response:
    job = _succeeded(session, user, job_id)
    info = job.artifact
    raw = store.get_bytes(info["manifest_key"])
    manifest_data = json.loads(raw)
    expiry = settings.presign_expiry_s
    manifest_url = store.presigned_url(info["manifest_key"], expiry)
    if manifest_url is not None:
        files = [
            PresignedFile(
                path=f["path"],
                size=f["size"],
                sha256=f["sha256"],
                url=store.presigned_url(f"{info['prefix']}/files/{f['path']}", expiry) or "",
            )
            for f in manifest_data["files"]
        ]
        body = PresignedArtifact(
            expires_in=expiry, manifest_sha256=info["manifest_sha256"], manifest_url=manifest_url, files=files
        )
        return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})
    return StreamingResponse(
        stream_tar(store, info["prefix"], manifest_data, raw),
        media_type="application/x-tar",
        headers={
            "Content-Disposition": f'attachment; filename="{job.id}.tar"',
            "X-Manifest-Sha256": info["manifest_sha256"],
        },
    )
