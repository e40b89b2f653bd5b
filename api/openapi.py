"""The OpenAPI document, made to match what the service answers: every error is `{"detail": "reason"}`
(422 included, not FastAPI's list of validation errors; a refusal of the request's fields adds `fields`, each problem
with the field it is about), `/jobs` routes may answer 429, and every route
but the probes may answer 503 with `Retry-After` (the database is down, or the process is at its in-flight limit);
`/readyz`'s 503 carries it too. `POST /jobs` shows example bodies (api.examples)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.examples import request_examples

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "properties": {
        "detail": {"type": "string", "description": "what went wrong"},
        "fields": {
            "type": "array",
            "description": "present when the request's fields are at fault (422): every problem, each with the field "
            "it is about — the request's JSON field, dotted for a nested one (`options.alpha`, `options.2ssp.alpha` "
            "in a sweep, `export_options.type`, `heal.steps`, `eval.1`), null for a problem that spans fields — and "
            "its message",
            "items": {
                "type": "object",
                "properties": {"field": {"type": ["string", "null"]}, "message": {"type": "string"}},
                "required": ["field", "message"],
            },
        },
    },
    "required": ["detail"],
    "examples": [{
        "detail": "seq_len: Input should be greater than or equal to 8; sparsity: Input should be less than 1",
        "fields": [
            {"field": "seq_len", "message": "seq_len: Input should be greater than or equal to 8"},
            {"field": "sparsity", "message": "sparsity: Input should be less than 1"},
        ],
    }],
}
ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}
NO_DATABASE = {"/healthz", "/openapi.json", "/docs", "/redoc"}


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": ERROR_CONTENT}
    if retry_after:
        response["headers"] = RETRY_AFTER
    return response


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components["Error"] = ERROR_SCHEMA
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                for code in ("401", "404", "409", "413", "422"):
                    if code in responses:
                        responses[code] = {**responses[code], "content": ERROR_CONTENT}
                if any(p.get("in") in ("query", "path") for p in operation.get("parameters", [])) or (
                    "requestBody" in operation
                ):
                    responses.setdefault("422", _error("invalid request"))
                if path.startswith("/jobs"):
                    responses.setdefault("429", _error("rate limit or active-job cap reached", retry_after=True))
                if path not in NO_DATABASE and path != "/readyz":
                    responses.setdefault(
                        "503", _error("the database is unavailable or the service is at capacity", retry_after=True)
                    )
                if path == "/readyz" and "503" in responses:  # not ready: every 503 carries Retry-After
                    responses["503"] = {**responses["503"], "headers": RETRY_AFTER}
        submit = schema.get("paths", {}).get("/jobs", {}).get("post", {}).get("requestBody")
        if submit is not None:
            submit["content"]["application/json"]["examples"] = request_examples()
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
