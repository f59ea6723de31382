"""Rendering: the templates, the filters they use, and ``ConsoleRoute``, which turns a missing
session into the sign-in page and an API problem into an error page (for a browser; a client
that does not ask for HTML gets the usual problem document)."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from api.console.auth import NotSignedIn
from api.problems import ApiProblem

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"


templates.env.filters["when"] = _when
templates.env.filters["ms"] = _ms
templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)


_MAX_FORM_BYTES = 4096  # the console's forms carry a key or a CSRF token, nothing more


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (first value each), read without python-multipart."""
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        raise ApiProblem(413, "form-too-large", "the form is larger than the console's forms")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def render(request: Request, name: str, context: dict[str, Any], *,
           status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


class ConsoleRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except NotSignedIn:
                if request.method == "GET" and wants_html(request):
                    target = quote(request.url.path, safe="/")
                    return RedirectResponse(f"/console/login?next={target}", status_code=303)
                return Response("sign in at /console/login", status_code=401,
                                media_type="text/plain")
            except ApiProblem as exc:
                if not wants_html(request):
                    raise
                return render(request, "error.html", {"status": exc.status, "title": exc.title,
                                                      "detail": exc.detail},
                              status_code=exc.status)

        return route
