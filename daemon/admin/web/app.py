"""The console as an ASGI application (Starlette, Jinja2 templates, static files from the package)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from aiosd.daemon.admin.status import duration
from aiosd.daemon.admin.web.auth import SESSION_SECONDS, RequireLogin, SecurityHeaders, checked_form, log_in
from aiosd.daemon.admin.web.console import Console
from aiosd.daemon.admin.web.downloads import results
from aiosd.daemon.admin.web.pages import Views, back
from aiosd.sdk.errors import AiosdError
from aiosd.sdk.process.lifecycle import Lifecycle
from aiosd.sdk.process.settings import Settings

HERE = Path(__file__).resolve().parent
#: Seconds between watchdog pings from the event loop (a stuck loop stops them and systemd restarts us).
TICK_SECONDS = 1.0


def templates() -> Jinja2Templates:
    """The page templates with the console's filters."""
    found = Jinja2Templates(directory=HERE / "templates")
    found.env.filters.update(duration=_duration, ago=_ago, when=_when)
    return found


def _duration(seconds: Any) -> str:
    return duration(float(seconds)) if isinstance(seconds, int | float) else "-"


def _ago(seconds: Any) -> str:
    return f"{duration(float(seconds))} ago" if isinstance(seconds, int | float) else "-"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else "-"


def create_app(settings: Settings, lifecycle: Lifecycle | None = None, console: Console | None = None) -> Starlette:
    """The console application; ``settings.web_password`` must be set."""
    if settings.web_password is None:
        raise ValueError("web_password is not set")
    password = settings.web_password.get_secret_value()
    key = settings.web_session_key.get_secret_value() if settings.web_session_key else secrets.token_urlsafe(32)
    console = console or Console(settings)
    views = Views(console, templates())

    async def login_form(request: Request) -> Response:
        return _login_page(views, request)

    async def login(request: Request) -> Response:
        target = await log_in(request, settings.web_user, password)
        if target is None:
            return _login_page(views, request, "wrong login or password", status=401)
        return back(request, target)

    async def logout(request: Request) -> Response:
        await checked_form(request)
        request.session.clear()
        return back(request, "/login")

    async def decide(request: Request) -> Response:
        form = await checked_form(request)
        ident, choice = str(form.get("id") or ""), form.get("decision")
        reason = str(form.get("reason") or "").strip() or None
        if choice not in ("approve", "deny") or not ident:
            return back(request, "/approvals", "choose approve or deny")
        if choice == "deny" and reason is None:
            return back(request, "/approvals", f"denying {ident} needs a reason (the agent is told it)")
        try:
            done = await run_in_threadpool(console.decide, ident, choice == "approve", reason)
        except AiosdError as exc:
            return back(request, "/approvals", str(exc))
        note = f"{done['_id']} {done['decision']}; the scheduler applies it within {settings.approval_poll:g}s"
        return back(request, "/approvals", note)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        console.start()
        ticker = asyncio.create_task(_tick(lifecycle)) if lifecycle is not None else None
        try:
            yield
        finally:
            if ticker is not None:
                ticker.cancel()
            if lifecycle is not None:
                lifecycle.stopping()
            await run_in_threadpool(console.close)

    routes = [
        Route("/", views.page("overview")),
        Route("/batches", views.page("batches")),
        Route("/batches/{batch_id}", views.page("batch")),
        Route("/batches/{batch_id}/results.{fmt}", lambda r: results(console, r)),
        Route("/workers", views.page("workers")),
        Route("/agents", views.page("agents")),
        Route("/audit", views.page("audit")),
        Route("/approvals", views.page("approvals")),
        Route("/approvals", decide, methods=["POST"]),
        Route("/part/{name}", views.part),
        Route("/api/overview", views.overview_json),
        Route("/api/batches/{batch_id}", views.batch_json),
        Route("/login", login_form),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=key,
            session_cookie="aiosd_console",
            max_age=SESSION_SECONDS,
            same_site="strict",
        ),
        Middleware(RequireLogin),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _login_page(views: Views, request: Request, error: str | None = None, status: int = 200) -> Response:
    context = {**views.common(request), "error": error, "next": request.query_params.get("next", "/")}
    return views.templates.TemplateResponse(request, "login.html", context, status_code=status)


async def _tick(lifecycle: Lifecycle) -> None:
    while True:
        lifecycle.tick()
        await asyncio.sleep(TICK_SECONDS)
