"""The console's door: one operator credential, a signed session cookie, CSRF tokens.

Logging in with ``web_user``/``web_password`` puts the login and a fresh
CSRF token in the session, a cookie signed by Starlette's session middleware
(``SameSite=Strict``, HTTP only, 12 hours). Every other path needs that
session: a page redirects to the login form, anything else (JSON, live
fragments, posts) is refused with 401. Every POST carries the session's CSRF
token in a form field, so another site cannot make a logged-in browser
approve or deny anything.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Paths open without a session.
PUBLIC = ("/login", "/static/")
#: Seconds a failed login waits before its answer (slows password guessing down).
FAILED_LOGIN_DELAY = 1.0
SESSION_SECONDS = 12 * 3600
#: Sent with every response: no framing, no sniffing, scripts and styles from the console only.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


class RequireLogin:
    """ASGI middleware: requests without a logged-in session are redirected (pages) or refused (401)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(PUBLIC) or scope["session"].get("user"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        response: Response
        if scope["method"] in ("GET", "HEAD") and not path.startswith(("/api/", "/part/")):
            response = RedirectResponse(f"/login?next={quote(path)}", status_code=303)
        else:
            response = PlainTextResponse("log in first", status_code=401)
        await response(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, sending if scope["type"] == "http" else send)


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def checked_form(request: Request) -> FormData:
    """The posted form, if its CSRF token is the session's; 403 otherwise."""
    form = await request.form()
    sent = form.get("csrf_token")
    expected = request.session.get("csrf")
    if not isinstance(sent, str) or not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        raise HTTPException(403, "stale or missing CSRF token: reload the page and try again")
    return form


def credentials_match(user: Any, password: Any, expected_user: str, expected_password: str) -> bool:
    """Constant-time check of both fields (a wrong name costs as much as a wrong password)."""
    if not isinstance(user, str) or not isinstance(password, str):
        return False
    same_user = hmac.compare_digest(user.encode(), expected_user.encode())
    same_password = hmac.compare_digest(password.encode(), expected_password.encode())
    return same_user and same_password


async def log_in(request: Request, user: str, password: str) -> str | None:
    """Check a login form; on success start a fresh session and return where to go, else ``None``."""
    form = await checked_form(request)
    if not credentials_match(form.get("username"), form.get("password"), user, password):
        await asyncio.sleep(FAILED_LOGIN_DELAY)
        return None
    request.session.clear()  # a new session on login: nothing carried over from before it
    request.session["user"] = user
    csrf_token(request)
    return local_path(request.query_params.get("next"))


def local_path(target: str | None) -> str:
    """``target`` if it is a path on this site, else ``/`` (no open redirect: browsers read ``/\\x`` as ``//x``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
