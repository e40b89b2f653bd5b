"""Dashboard sign-in: an API key is exchanged for a signed session cookie; forms carry a per-session CSRF token.

The cookie is `KEY_ID.EXPIRES.NONCE.MAC`, where MAC is an HMAC keyed by the API key's stored hash (never sent to
the browser), so no session table and no extra secret are needed, every API replica can check it, and revoking
the key ends its sessions. The cookie is HttpOnly, SameSite=Strict, and Secure when the page is served over https.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import HTTPException, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import ApiKey, User
from service.keys import hash_key, user_for_key

SESSION_COOKIE = "twossp_session"
LOGIN_COOKIE = "twossp_login_csrf"
SESSION_TTL_S = 12 * 3600


@dataclass(frozen=True)
class UiSession:
    user: User
    csrf: str


def _mac(secret: str, *parts: str) -> str:
    return hmac.new(secret.encode(), "|".join(parts).encode(), hashlib.sha256).hexdigest()


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def sign_in(session: Session, api_key: str, response: Response, request: Request) -> bool:
    """Check the key with the API's own lookup and set the session cookie; False for a wrong key."""
    if not api_key or user_for_key(session, api_key) is None:
        return False
    key_hash = hash_key(api_key)
    key_id = session.scalar(select(ApiKey.id).where(ApiKey.key_hash == key_hash))
    if key_id is None:
        return False
    expires = str(int(time.time()) + SESSION_TTL_S)
    nonce = secrets.token_urlsafe(16)
    value = ".".join([key_id, expires, nonce, _mac(key_hash, "session", key_id, expires, nonce)])
    response.set_cookie(
        SESSION_COOKIE, value, max_age=SESSION_TTL_S, path="/ui", httponly=True, samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return True


def sign_out(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/ui", httponly=True, samesite="strict", secure=_secure(request))


def current_session(request: Request, session: Session) -> UiSession | None:
    """The signed-in user of this request, or None (no cookie, bad MAC, expired, revoked key)."""
    value = request.cookies.get(SESSION_COOKIE, "")
    parts = value.split(".")
    if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) < time.time():
        return None
    key_id, expires, nonce, mac = parts
    key = session.get(ApiKey, key_id)
    if key is None or key.revoked_at is not None:
        return None
    if not hmac.compare_digest(mac, _mac(key.key_hash, "session", key_id, expires, nonce)):
        return None
    return UiSession(user=key.user, csrf=_mac(key.key_hash, "csrf", key_id, nonce))


def require_session(request: Request, session: Session) -> UiSession:
    """The signed-in user, or a redirect to the sign-in page (which comes back here afterwards)."""
    ui = current_session(request, session)
    if ui is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(303, "sign in first", headers={"Location": f"/ui/login?next={quote(target, safe='')}"})
    return ui


def check_csrf(ui: UiSession, token: str | None) -> None:
    if not token or not hmac.compare_digest(token, ui.csrf):
        raise HTTPException(403, "invalid or missing CSRF token: reload the page and try again")


def login_token(request: Request) -> str:
    """The sign-in form's CSRF token (double submit: the same random value in a cookie and in the form)."""
    return request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)


def set_login_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE, token, max_age=3600, path="/ui", httponly=True, samesite="strict", secure=_secure(request)
    )


def check_login_token(request: Request, token: str | None) -> bool:
    cookie = request.cookies.get(LOGIN_COOKIE)
    return bool(cookie and token and hmac.compare_digest(cookie, token))


def safe_next(target: str | None) -> str:
    """Only same-site dashboard paths are followed after sign-in (no open redirect)."""
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui"
