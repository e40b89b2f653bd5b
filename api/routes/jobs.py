"""Job endpoints: submit, get, list, cancel, download the artifact and its manifest."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.archive import stream_tar
from api.db.models import JobState
from api.deps import BrokerDep, SessionDep, SettingsDep, StoreDep, UserDep
from api.errors import Conflict, InputRejected
from api.schemas import JobOut, JobPage, PresignedArtifact, PresignedFile
from api.services import jobs as service
from twossp_core.spec import PruneSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    404: {"description": "no such job for this user"},
}
_DETAIL = {"content": {"application/json": {"schema": {"properties": {"detail": {"type": "string"}}}}}}

# the body is validated by the core's parse_spec (one validator for CLI, API and worker); document its schema
SUBMIT_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": PruneSpec.model_json_schema()}}}
}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a pruning job",
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
    result = await run_in_threadpool(service.submit_job, session, broker, settings, user, body, idempotency_key)
    out = JobOut.from_row(result.job)
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
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    limit = min(limit, settings.page_size_max)
    rows, total = service.list_jobs(session, user, state, limit, offset)
    nxt = None
    if offset + len(rows) < total:
        params = {"limit": str(limit), "offset": str(offset + limit)}
        if state is not None:
            params["state"] = state.value
        nxt = str(request.url.include_query_params(**params))
    return JobPage(items=[JobOut.from_row(j) for j in rows], total=total, limit=limit, offset=offset, next=nxt)


@router.get("/{job_id}", response_model=JobOut, summary="A job's state, progress and report", responses=ERRORS)
def get_job(job_id: str, session: SessionDep, user: UserDep) -> JobOut:
    return JobOut.from_row(service.get_job(session, user, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    status_code=202,
    summary="Cancel a queued or running job",
    responses={**ERRORS, 409: {"description": "the job already finished", **_DETAIL}},
)
def cancel(job_id: str, session: SessionDep, user: UserDep) -> JobOut:
    return JobOut.from_row(service.cancel_job(session, user, job_id))


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
    summary="Download the pruned model",
    description=(
        "Local store: a streamed tar (`manifest.json` + `model/...`). S3 store: JSON with short-lived presigned "
        "URLs for the manifest and every file."
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
