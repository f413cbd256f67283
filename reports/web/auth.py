"""Who is calling: users with Argon2-hashed passwords, API tokens and browser sessions (only their SHA-256 kept).

Every /api/ route depends on `current_user`: HTTP Basic, a bearer token or the session cookie, else 401."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import sys
from datetime import datetime, timedelta
from typing import Annotated

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import (
    APIKeyCookie,
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from plvi.db import make_engine, session_scope, upgrade_database
from plvi.models import AuthToken, User, utcnow
from plvi.settings import Settings

SESSION_COOKIE = "plvi_session"
_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps the answer time the same as for a wrong password.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(engine: Engine, username: str, password: str, full_name: str = "") -> User:
    """Add a user, or set the password of an existing one (how an operator resets a forgotten password)."""
    if not username.strip() or len(username) > 64:
        raise ValueError("a username needs 1 to 64 characters")
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    with session_scope(engine) as session:
        user = session.exec(select(User).where(User.username == username)).first()
        if user is None:
            user = User(username=username, password_hash=hash_password(password), full_name=full_name)
        else:
            user.password_hash, user.is_active = hash_password(password), True
            user.full_name = full_name or user.full_name
        session.add(user)
        session.flush()
        session.refresh(user)
    return user


def authenticate_password(session: Session, username: str, password: str) -> User | None:
    user = session.exec(select(User).where(User.username == username, User.is_active.is_(True))).first()  # type: ignore[attr-defined]
    if user is None:
        verify_password(_DUMMY_HASH, password)
        return None
    return user if verify_password(user.password_hash, password) else None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(session: Session, user: User, *, kind: str, name: str = "", lifetime: timedelta | None = None) -> str:
    """A new random token for `user`; the caller shows it once, the database keeps only its digest."""
    token = secrets.token_urlsafe(32)
    assert user.id is not None
    session.add(AuthToken(user_id=user.id, token_sha256=_digest(token), kind=kind, name=name,
                          expires_at=utcnow() + lifetime if lifetime else None))
    return token


def revoke_token(session: Session, token: str) -> None:
    for row in session.exec(select(AuthToken).where(AuthToken.token_sha256 == _digest(token))).all():
        session.delete(row)


def user_for_token(session: Session, token: str, now: datetime | None = None) -> User | None:
    row = session.exec(select(AuthToken).where(AuthToken.token_sha256 == _digest(token))).first()
    now = now or utcnow()
    if row is None or (row.expires_at is not None and row.expires_at <= now):
        return None
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        return None
    row.last_used_at = now
    session.add(row)
    return user


def user_from_request(request: Request, engine: Engine) -> User | None:
    """The user behind the request's credentials, or None. Basic, Bearer, then the session cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    with session_scope(engine) as session:
        if scheme.lower() == "basic":
            try:
                username, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return authenticate_password(session, username, password)
        if scheme.lower() == "bearer" and credentials:
            return user_for_token(session, credentials.strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        return user_for_token(session, cookie) if cookie else None


UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="PLVI", Basic realm="PLVI"'}


# Declared so the OpenAPI schema lists the three ways in; the checking is done by user_from_request.
basic_scheme = HTTPBasic(auto_error=False, description="a dashboard user's name and password")
bearer_scheme = HTTPBearer(auto_error=False, description="an API token from POST /api/tokens")
cookie_scheme = APIKeyCookie(name=SESSION_COOKIE, auto_error=False, description="a dashboard login session")


def require_user(
    request: Request,
    _basic: Annotated[HTTPBasicCredentials | None, Depends(basic_scheme)],
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    _cookie: Annotated[str | None, Depends(cookie_scheme)],
) -> User:
    """FastAPI dependency of every /api/ route."""
    user = user_from_request(request, request.app.state.engine)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="credentials required: HTTP Basic with a dashboard user, a bearer token (POST /api/tokens), "
            "or log in at /login",
            headers=UNAUTHORIZED_HEADERS,
        )
    request.state.user = user
    return user


def user_add_command(settings: Settings, username: str, password: str, full_name: str) -> int:
    """`plvi user-add`: exit code 0 when the user can log in, 2 when the input was refused."""
    upgrade_database(settings.effective_database_url)
    engine = make_engine(settings.effective_database_url)
    try:
        user = create_user(engine, username, password, full_name)
    except ValueError as error:
        print(f"user not added: {error}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"user {user.username} can log in to the dashboard and the API", file=sys.stderr)
    return 0
