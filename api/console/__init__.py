"""The operator console: server-rendered pages over the REST API, served by the API process
under /console (docs/CONSOLE.md). ``install_console(app)`` mounts it (``create_app`` does, with
the settings of the environment); called again, it replaces the settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.console.auth import SessionStore
from api.console.data import ConsoleSettings


@dataclass
class ConsoleState:
    settings: ConsoleSettings
    sessions: SessionStore


def install_console(app: FastAPI, settings: ConsoleSettings | None = None) -> None:
    from api.console import routes, session_routes

    settings = settings or ConsoleSettings()
    installed = getattr(app.state, "console", None) is not None
    app.state.console = ConsoleState(settings, SessionStore(settings.session_s, settings.login_link_s))
    if installed:  # a second call (tests) only replaces the settings
        return
    app.include_router(session_routes.router)
    app.include_router(routes.router)
    app.mount("/console/static", StaticFiles(directory=Path(__file__).parent / "static"),
              name="console-static")
