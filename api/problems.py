"""One error shape for every 4xx and 5xx: RFC 9457 problem details (application/problem+json).

``type`` is ``urn:compute-server:problem:<slug>`` (see docs/API.md for the list), ``title`` the
short class of problem, ``detail`` this occurrence, ``instance`` the request path; validation
problems add ``errors`` (where, what). No stack trace or exception text of an unexpected error
ever reaches a client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger("api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
_URN = "urn:compute-server:problem:"


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[FieldProblem] | None = None


class ApiProblem(Exception):
    """Raised by routes: becomes a problem response with this status and detail."""

    def __init__(self, status: int, slug: str, detail: str, *, title: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers


def problem_response(request: Request, status: int, slug: str, detail: str, *,
                     title: str | None = None, errors: list[dict[str, Any]] | None = None,
                     headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(type=_URN + slug, title=title or HTTPStatus(status).phrase, status=status,
                   detail=detail, instance=request.url.path,
                   errors=None if errors is None else [FieldProblem(**e) for e in errors])
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status,
                        media_type=PROBLEM_MEDIA_TYPE, headers=headers)


# Retry-After of a 503 while PostgreSQL is down: a restart takes seconds.
DATABASE_RETRY_AFTER_S = 2

_SLUGS = {400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
          405: "method-not-allowed", 406: "not-acceptable", 409: "conflict",
          413: "payload-too-large", 415: "unsupported-media-type", 422: "validation-error",
          429: "too-many-requests", 503: "unavailable"}


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(request, exc.status, exc.slug, exc.detail, title=exc.title,
                                headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = getattr(exc, "headers", None)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        if exc.status_code == 405:
            allow = _allowed_methods(request)
            headers, detail = {**(headers or {}), "Allow": allow}, f"allowed: {allow}"
        return problem_response(request, exc.status_code, _SLUGS.get(exc.status_code, "http-error"),
                                detail, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) if not isinstance(p, int) else p for p in e.get("loc", ())],
                   "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return problem_response(request, 400, "malformed-json",
                                    "the request body is not valid JSON", errors=errors)
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        return problem_response(request, 422, "validation-error",
                                f"the request is not valid: {where}", errors=errors)

    @app.exception_handler(psycopg.OperationalError)
    async def _database_down(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        # PostgreSQL unreachable, restarting or shut down (a connection refused or cut): the
        # request may succeed later, so a client that retries on 503 retries it (docs/API.md).
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                    type(exc).__name__)
        return problem_response(request, 503, "service-unavailable",
                                "the database is unavailable; retry later",
                                headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(request, 500, "internal-error",
                                "an unexpected error occurred; it has been logged")


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (asked of the router, method by method).
    Starlette's 405 names only the methods of the first route matching the path, and GET and
    POST of one path are two routes here."""
    routes = request.app.router.routes
    return ", ".join(m for m in _METHODS if any(
        route.matches({**request.scope, "method": m})[0] is Match.FULL for route in routes))


class BodySizeLimit:
    """Pure ASGI middleware: 413 for a body over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, send)
            return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(scope, send)

    async def _reject(self, scope: dict, send: Any) -> None:
        request = Request(scope)
        response = problem_response(request, 413, "payload-too-large",
                                    f"the request body exceeds {self.max_bytes} bytes")
        await response(scope, _no_receive, send)


class _TooLarge(HTTPException):
    """Raised while the body is read; FastAPI passes HTTPExceptions through to the handlers."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body exceeds {max_bytes} bytes")


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}
