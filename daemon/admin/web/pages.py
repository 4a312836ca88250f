"""The console's pages, their live fragments and JSON.

Each page is a frame around one or more *parts* (``templates/parts/``). A part
is rendered in the page and again, alone, by ``GET /part/<name>``, which the
page's script fetches every few seconds and swaps in: live updates without a
reload, with one template per piece of the screen. Handlers are plain
functions; Starlette runs them in its thread pool, where blocking MongoDB
reads belong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from aiosd.daemon.admin.status import to_json
from aiosd.daemon.admin.web.auth import csrf_token
from aiosd.daemon.admin.web.console import Console
from aiosd.daemon.store import Doc


@dataclass(frozen=True)
class Part:
    """A live piece of a page: its template, what it reads, how often it is refreshed."""

    template: str
    read: Callable[[Console, Request], Doc]
    every: float = 2.0
    #: Reads one batch, named by ``?id=`` when fetched alone.
    per_batch: bool = False


def _batch_id(request: Request) -> str:
    batch_id = request.query_params.get("id") or request.path_params.get("batch_id")
    if not batch_id:
        raise HTTPException(400, "which batch? (?id=...)")
    return str(batch_id)


def _batch(console: Console, request: Request) -> Doc:
    figures = console.batches.figures(_batch_id(request))
    if figures is None:
        raise HTTPException(404, "no such batch")
    return {"batch": figures}


def _batch_tasks(console: Console, request: Request) -> Doc:
    found = console.batches.tasks_pass(_batch_id(request))
    if found is None:
        raise HTTPException(404, "no such batch")
    return {"chart": found.chart, "failures": found.failures, "batch_id": _batch_id(request)}


def _audit(console: Console, _: Request) -> Doc:
    records, check = console.audit()
    return {"records": records, "check": check}


PARTS: dict[str, Part] = {
    "overview": Part("parts/overview.html", lambda c, _: {"view": c.overview()}),
    "batches": Part("parts/batches.html", lambda c, _: {"batches": c.recent_batches()}),
    "batch": Part("parts/batch.html", _batch, per_batch=True),
    "batch-tasks": Part("parts/batch_tasks.html", _batch_tasks, every=5.0, per_batch=True),
    "workers": Part("parts/workers.html", lambda c, _: c.workers(), every=5.0),
    "agents": Part("parts/agents.html", lambda c, _: {"agents": c.agents()}, every=5.0),
    "audit": Part("parts/audit.html", _audit, every=5.0),
    "approvals": Part("parts/approvals.html", lambda c, _: {"approvals": c.approvals()}),
}


@dataclass(frozen=True)
class Page:
    """A page: its title and its parts, in order."""

    title: str
    parts: tuple[str, ...]


PAGES: dict[str, Page] = {
    "overview": Page("Overview", ("overview",)),
    "batches": Page("Batches", ("batches",)),
    "batch": Page("Batch", ("batch", "batch-tasks")),
    "workers": Page("Workers", ("workers",)),
    "agents": Page("Agents", ("agents",)),
    "audit": Page("Audit log", ("audit",)),
    "approvals": Page("Approvals", ("approvals",)),
}


class Views:
    """Request handlers bound to the console and the templates."""

    def __init__(self, console: Console, templates: Jinja2Templates) -> None:
        self.console = console
        self.templates = templates

    def common(self, request: Request) -> Doc:
        """What every template gets: the login, the CSRF token, a flash message."""
        return {
            "user": request.session.get("user"),
            "csrf": csrf_token(request),
            "flash": request.session.pop("flash", None),
        }

    def page(self, name: str) -> Callable[[Request], Response]:
        """The handler of page ``name``: the frame with each part rendered in it."""
        page = PAGES[name]

        def handler(request: Request) -> Response:
            context: Doc = {**self.common(request), "page": name, "title": page.title, "parts": []}
            for part_name in page.parts:
                part = PARTS[part_name]
                context.update(part.read(self.console, request))
                query = urlencode({"id": _batch_id(request)}) if part.per_batch else ""
                context["parts"].append(
                    {"name": part_name, "template": part.template, "every": part.every, "query": query}
                )
            return self.templates.TemplateResponse(request, "page.html", context)

        return handler

    def part(self, request: Request) -> Response:
        """``GET /part/<name>``: one part alone, for the live refresh."""
        part = PARTS.get(request.path_params["name"])
        if part is None:
            raise HTTPException(404, "no such part")
        context = {**self.common(request), **part.read(self.console, request)}
        return self.templates.TemplateResponse(request, part.template, context)

    def overview_json(self, _: Request) -> Response:
        """``GET /api/overview``: what ``aiosd status --json`` prints."""
        return Response(to_json(self.console.overview()), media_type="application/json")

    def batch_json(self, request: Request) -> Response:
        """``GET /api/batches/<id>``: what ``aiosd batch status --json`` prints."""
        figures = self.console.batches.figures(_batch_id(request))
        if figures is None:
            return JSONResponse({"error": "no such batch"}, status_code=404)
        return Response(to_json(figures), media_type="application/json")


def back(request: Request, path: str, flash: str | None = None) -> Response:
    """Redirect after a POST (so a reload does not post again), with an optional message."""
    if flash:
        request.session["flash"] = flash
    return RedirectResponse(path, status_code=303)
