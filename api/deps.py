"""FastAPI dependencies: settings, database session, store, broker, and the authenticated user.

The ones that do no blocking work are `async` so they cost no trip through the handler thread pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import TooManyRequests, Unauthorized, Unavailable
from api.limits import KeyCache, Limiter, make_limiter
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


def _limits(request: Request) -> tuple[Limiter, KeyCache]:
    state = request.app.state
    if getattr(state, "rate_limiter", None) is None:
        settings: Settings = state.settings
        state.key_cache = KeyCache(settings.auth_cache_s)
        state.rate_limiter = make_limiter(settings.broker_url, settings.rate_limit_per_s, settings.rate_limit_burst)
    return state.rate_limiter, state.key_cache


async def _spend(request: Request, bucket: str, per: str) -> None:
    """Spend one request of `bucket`'s budget, or answer 429 with Retry-After."""
    limiter, _ = _limits(request)
    wait = await limiter.check(bucket)
    if wait:
        raise TooManyRequests(
            f"rate limit: at most {limiter.rate:g} requests/s per {per} (bursts of {limiter.burst}); "
            f"retry after {wait} s",
            retry_after=wait,
        )


async def current_user(
    request: Request,
    session: Annotated[Session, Depends(get_session, scope="function")],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing API key: send `Authorization: Bearer KEY`")
    _, cache = _limits(request)
    digest = hash_key(credentials.credentials)
    cached = cache.get(digest)
    if cached is None:
        user = await run_in_threadpool(user_for_key, session, credentials.credentials)
        if user is None:
            raise Unauthorized("invalid API key")
        cached = (user.id, user.name)
        cache.put(digest, cached)
    await _spend(request, f"key:{digest}", "API key")
    return User(id=cached[0], name=cached[1])  # detached: routes use its id and name only


async def ui_rate_limit(request: Request) -> None:
    """Dashboard requests (sign-in included) spend the budget of the client's address: a forged or missing
    session cookie cannot buy a fresh budget, and guessing keys at the sign-in form is slowed like any request."""
    await _spend(request, f"ui:{request.client.host if request.client else 'unknown'}", "client address")


SettingsDep = Annotated[Settings, Depends(get_settings)]
# closed as soon as the route function returns, not after the response is sent (a streamed download must not
# hold a session slot)
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
UserDep = Annotated[User, Depends(current_user)]
