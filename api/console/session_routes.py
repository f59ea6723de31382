"""Signing in and out of the console, and the one-time login links (``make demo``,
``computectl up``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from api.console.auth import COOKIE, COOKIE_PATH, SessionStore
from api.console.pages import ConsoleRoute, read_form, render
from api.deps import CallerDep
from projection.db.apikeys import Caller, verify_key

router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)


def _store(request: Request) -> SessionStore:
    return request.app.state.console.sessions


def _signed_in(request: Request, caller: Caller) -> Response:
    """A new session for ``caller``: its cookie, and on to the overview."""
    sid, _ = _store(request).open(caller)
    response = RedirectResponse("/console/", status_code=303)
    settings = request.app.state.console.settings
    response.set_cookie(COOKIE, sid, max_age=int(settings.session_s), path=COOKIE_PATH,
                        httponly=True, samesite="lax", secure=settings.secure_cookie)
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> Response:
    return render(request, "login.html", {"error": None})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    caller, api_key = None, (await read_form(request)).get("api_key", "")[:200]
    if api_key.strip():
        async with request.app.state.pool.connection() as conn:
            caller = await verify_key(conn, api_key.strip())
    if caller is None:
        return render(request, "login.html", {"error": "That API key is unknown or revoked."},
                      status_code=401)
    return _signed_in(request, caller)


@router.get("/login/{token}", response_class=HTMLResponse)
async def login_link(request: Request, token: str) -> Response:
    caller = _store(request).redeem_link(token)
    if caller is None:
        return render(request, "login.html", {
            "error": "That login link has been used or has expired; sign in with an API key."},
            status_code=401)
    return _signed_in(request, caller)


@router.post("/logout")
async def logout(request: Request) -> Response:
    _store(request).close(request.cookies.get(COOKIE))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


@router.post("/login-links")
async def create_login_link(request: Request, caller: CallerDep) -> JSONResponse:
    """A one-time login link for the Bearer key's caller (the link signs in as that key)."""
    token = _store(request).issue_link(caller)
    path = f"/console/login/{token}"
    return JSONResponse({"path": path, "url": str(request.base_url).rstrip("/") + path,
                         "expires_in_s": request.app.state.console.settings.login_link_s},
                        status_code=201)
