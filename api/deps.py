"""FastAPI dependencies: settings, database session, store, broker, and the authenticated user."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import Unauthorized
from service.broker import Broker
from service.db.models import User
from service.db.session import Database
from service.keys import user_for_key
from service.settings import Settings
from service.store import ArtifactStore

bearer = HTTPBearer(auto_error=False, description="an API key from `twossp keys create NAME`")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_session(db: Annotated[Database, Depends(get_db)]) -> Iterator[Session]:
    with db.session() as session:
        yield session


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_broker(request: Request) -> Broker:
    return request.app.state.broker


def current_user(
    session: Annotated[Session, Depends(get_session)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing API key: send `Authorization: Bearer KEY`")
    user = user_for_key(session, credentials.credentials)
    if user is None:
        raise Unauthorized("invalid API key")
    return user


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
BrokerDep = Annotated[Broker, Depends(get_broker)]
UserDep = Annotated[User, Depends(current_user)]
