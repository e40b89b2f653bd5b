"""Service exceptions and the single mapping from exception type to HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from twossp_core.errors import (
    DataError,
    FieldProblem,
    InfeasibleTarget,
    InvalidSpec,
    ModelNotFound,
    TwosspError,
    UnsupportedModel,
)


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field  # the request's field it is about, if one (twossp_core.errors)


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Unauthorized(ServiceError):
    status_code = 401


class Unavailable(ServiceError):
    status_code = 503


class TooManyRequests(ServiceError):
    """A rate limit or a cap on a user's active jobs; the client may retry after `retry_after` seconds."""

    status_code = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)


class InputRejected(ServiceError):
    """A request that is well-formed JSON but breaks an operator rule (paths, hub access)."""

    status_code = 422


STATUS_BY_TYPE: list[tuple[type[Exception], int]] = [
    (InvalidSpec, 422),
    (InfeasibleTarget, 422),
    (UnsupportedModel, 422),
    (ModelNotFound, 422),
    (DataError, 422),
    (TwosspError, 400),
]


def status_for(exc: Exception) -> int:
    if isinstance(exc, ServiceError):
        return exc.status_code
    for exc_type, status in STATUS_BY_TYPE:
        if isinstance(exc, exc_type):
            return status
    return 500


def _problems_from_validation(exc: RequestValidationError) -> list[FieldProblem]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        msg = str(err.get("msg", "invalid"))
        problems.append(FieldProblem(loc, f"{loc}: {msg}", msg) if loc else FieldProblem(None, msg))
    return problems


def _detail_from_validation(exc: RequestValidationError) -> str:
    return "; ".join(problem.message for problem in _problems_from_validation(exc)) or "invalid request"


def problems_of(exc: Exception) -> list[FieldProblem]:
    """An error's problems, each with the request field it is about (twossp_core.errors); empty for an error that is
    not about the request."""
    if isinstance(exc, TwosspError):
        return list(exc.problems)
    if isinstance(exc, ServiceError):
        return [FieldProblem(exc.field, exc.detail)]
    return []


def error_body(detail: str, problems: list[FieldProblem]) -> dict[str, Any]:
    """An error's JSON body: `detail`, and where the request's fields are at fault, `fields`: each problem with the
    field it is about (null for one that spans fields) and its message (the OpenAPI schema's Error)."""
    body: dict[str, Any] = {"detail": detail}
    if any(problem.field for problem in problems):
        body["fields"] = [{"field": problem.field, "message": problem.message} for problem in problems]
    return body


log = logging.getLogger(__name__)
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def database_unavailable(exc: Exception) -> str | None:
    """Why the database cannot serve right now (pool exhausted, unreachable, connection lost), else None."""
    if isinstance(exc, sa_exc.TimeoutError):
        return "the service is at capacity (no database connection free); retry shortly"
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    ):
        return "the database is unavailable; retry shortly"
    return None


def install_error_handlers(app: FastAPI) -> None:
    retry_after = str(app.state.settings.retry_after_s)

    async def handle_known(request: Request, exc: Exception) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(exc.retry_after)}
        elif isinstance(exc, Unavailable):
            headers = {"Retry-After": retry_after}
        return JSONResponse(error_body(str(exc), problems_of(exc)), status_code=status_for(exc), headers=headers)

    async def handle_database(request: Request, exc: Exception) -> JSONResponse:
        reason = database_unavailable(exc)
        if reason is None:
            return await handle_unexpected(request, exc)
        log.warning("%s %s: 503 (%s: %s)", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse({"detail": reason}, status_code=503, headers={"Retry-After": retry_after})

    async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    async def handle_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(error_body(_detail_from_validation(exc), _problems_from_validation(exc)), status_code=422)

    app.add_exception_handler(ServiceError, handle_known)
    app.add_exception_handler(TwosspError, handle_known)
    async def handle_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of every route at this path, not only the first route's
            methods = {
                method
                for method in HTTP_METHODS
                for route in request.app.router.routes
                if route.matches({**request.scope, "method": method})[0] is Match.FULL
            }
            if methods:
                headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers or None)

    app.add_exception_handler(StarletteHTTPException, handle_http)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(sa_exc.SQLAlchemyError, handle_database)
    app.add_exception_handler(Exception, handle_unexpected)
