"""Service exceptions and the single mapping from exception type to HTTP status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from twossp_core.errors import (
    DataError,
    InfeasibleTarget,
    InvalidSpec,
    ModelNotFound,
    TwosspError,
    UnsupportedModel,
)


class ServiceError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class Unauthorized(ServiceError):
    status_code = 401


class Unavailable(ServiceError):
    status_code = 503


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


def _detail_from_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    async def handle_known(request: Request, exc: Exception) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse({"detail": str(exc)}, status_code=status_for(exc), headers=headers)

    async def handle_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"detail": _detail_from_validation(exc)}, status_code=422)

    app.add_exception_handler(ServiceError, handle_known)
    app.add_exception_handler(TwosspError, handle_known)
    app.add_exception_handler(RequestValidationError, handle_validation)
