"""API keys: random tokens shown once; only their sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import ApiKey, User
from service.db.types import utcnow

KEY_PREFIX = "tsp_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, user_name: str) -> str:
    """Create (or reuse) the user `user_name` and give it a new key; returns the plain key."""
    name = user_name.strip()
    if not name:
        raise ValueError("user name must not be empty")
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        user = User(name=name)
        session.add(user)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(user_id=user.id, key_hash=hash_key(key), prefix=key[: len(KEY_PREFIX) + 6]))
    session.commit()
    return key


def user_for_key(session: Session, key: str) -> User | None:
    row = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return row.user if row is not None else None


def list_keys(session: Session) -> list[ApiKey]:
    """Every key (revoked ones included), oldest first, with its user loaded."""
    return list(session.scalars(select(ApiKey).join(User).order_by(ApiKey.created_at, User.name)))


def revoke_key(session: Session, key_or_prefix: str) -> ApiKey:
    """Revoke the key given whole or by the prefix `keys list` shows; LookupError when none or several match."""
    text = key_or_prefix.strip()
    rows = list(session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(text))))
    if not rows and text:
        rows = list(session.scalars(select(ApiKey).where(ApiKey.prefix.startswith(text, autoescape=True))))
    if len(rows) != 1:
        raise LookupError(f"{len(rows)} keys match {text!r}; give the whole key or a longer prefix")
    row = rows[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row
