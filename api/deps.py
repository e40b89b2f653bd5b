"""FastAPI dependencies: settings, database session, store, broker, and the authenticated user.

The ones that do no blocking work are `async` so they cost no trip through the handler thread pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, NoReturn

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import TooManyRequests, Unauthorized, Unavailable
from api.limits import Gate, Limiter, Limits
from service.broker import Broker
from service.db.models import User
from service.db.session import Database
from service.keys import hash_key, user_for_key
from service.settings import Settings
from service.store import ArtifactStore

# closing a session (returning its connection) must never wait behind request handlers for a thread
_CLOSE_LIMITER = anyio.CapacityLimiter(64)
bearer = HTTPBearer(auto_error=False, description="an API key from `twossp keys create NAME`")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> Database:
    return request.app.state.db


async def get_session(request: Request, db: Annotated[Database, Depends(get_db)]) -> AsyncIterator[Session]:
    """A session for this request, once one of the `api_threads` session slots is free.

    The pool holds more connections than there are slots, so a session never waits for a connection while
    holding a handler thread (the deadlock of sizing threads and connections independently); waiting for a
    slot happens on the event loop and gives up after `db_pool_timeout_s` with a 503.
    """
    state = request.app.state
    if getattr(state, "session_slots", None) is None:
        state.session_slots = anyio.Semaphore(state.settings.api_threads)
    try:
        with anyio.fail_after(state.settings.db_pool_timeout_s):
            await state.session_slots.acquire()
    except TimeoutError:
        raise Unavailable("the service is at capacity (every database session is busy); retry shortly") from None
    try:
        session = db.sessions()
        try:
            yield session
        finally:
            await anyio.to_thread.run_sync(session.close, limiter=_CLOSE_LIMITER)
    finally:
        state.session_slots.release()


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def get_broker(request: Request) -> Broker:
    return request.app.state.broker


def _limits(request: Request) -> Limits:
    state = request.app.state
    if getattr(state, "limits", None) is None:
        state.limits = Limits.from_settings(state.settings)
    return state.limits


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _failures_of(request: Request) -> str:
    return f"authfail:{client_address(request)}"


async def _spend(request: Request, bucket: str, per: str, gate: Gate | None = None, cost: int = 1) -> None:
    """Spend `cost` requests of `bucket`'s budget, or answer 429 with Retry-After (also when the `gate` bucket,
    the address's failed authentications, is empty)."""
    limiter = _limits(request).requests
    wait = await limiter.check(bucket, gate=gate, cost=cost)
    if wait < 0 and gate is not None:
        raise _too_many_failures(gate[0], -wait)
    if wait:
        raise TooManyRequests(
            f"rate limit: at most {limiter.rate:g} requests/s per {per} (bursts of {limiter.burst}); "
            f"retry after {wait} s",
            retry_after=wait,
        )


def _too_many_failures(limiter: Limiter, wait: int) -> TooManyRequests:
    return TooManyRequests(
        f"too many failed authentications from this address: {limiter.burst} missing or wrong API keys, then "
        f"one more every {1 / limiter.rate:g} s; retry after {wait} s",
        retry_after=wait,
    )


async def refuse_blocked_address(request: Request) -> None:
    """429 when the client's address has spent its budget of failed authentications. Checked before a key is
    looked up: a blocked address learns nothing about the keys it tries, valid ones included."""
    limiter = _limits(request).auth_failures
    wait = await limiter.check(_failures_of(request), spend=False)
    if wait:
        raise _too_many_failures(limiter, wait)


async def record_failed_authentication(request: Request) -> None:
    """Spend one failed authentication of the client's address; 429 instead of the failure's own answer when
    none was left."""
    limiter = _limits(request).auth_failures
    wait = await limiter.check(_failures_of(request))
    if wait:
        raise _too_many_failures(limiter, wait)


async def _unauthorized(request: Request, detail: str) -> NoReturn:
    await record_failed_authentication(request)
    raise Unauthorized(detail)


async def current_user(
    request: Request,
    session: Annotated[Session, Depends(get_session, scope="function")],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    """The key's user. Every request from an address that has spent its failed authentications gets 429: a
    key that must be looked up is checked against that budget first, and a key found in the cache (a valid
    one) in the same Redis round trip that spends its request budget."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        await _unauthorized(request, "missing API key: send `Authorization: Bearer KEY`")
    limits = _limits(request)
    digest = hash_key(credentials.credentials)
    cached = limits.keys.get(digest)
    gate: Gate | None = (limits.auth_failures, _failures_of(request))
    if cached is None:
        await refuse_blocked_address(request)
        user = await run_in_threadpool(user_for_key, session, credentials.credentials)
        if user is None:
            await _unauthorized(request, "invalid API key")
        cached = (user.id, user.name)
        limits.keys.put(digest, cached)
        gate = None  # looked at just now
    await _spend(request, f"key:{digest}", "API key", gate)
    request.state.rate_bucket = f"key:{digest}"
    return User(id=cached[0], name=cached[1])  # detached: routes use its id and name only


async def spend_more(request: Request, count: int) -> None:
    """The request counts as `count` more of its API key's budget (a sweep: one per cell beyond the first), or
    429 with Retry-After."""
    bucket = getattr(request.state, "rate_bucket", None)
    if bucket is not None and count > 0:
        await _spend(request, bucket, "API key (a sweep counts each of its cells)", cost=count)


async def ui_rate_limit(request: Request) -> None:
    """Dashboard requests (sign-in included) spend the budget of the client's address: a forged or missing
    session cookie cannot buy a fresh budget, and guessing keys at the sign-in form is slowed like any request."""
    await _spend(request, f"ui:{client_address(request)}", "client address")


SettingsDep = Annotated[Settings, Depends(get_settings)]
# closed as soon as the route function returns, not after the response is sent (a streamed download must not
# hold a session slot)
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
UserDep = Annotated[User, Depends(current_user)]
