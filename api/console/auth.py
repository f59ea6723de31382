"""Console sign-in: an API key (tenant or operator) typed into a form, or a one-time login link,
becomes an HttpOnly session cookie.

Sessions and login links live in the API process's memory (``SessionStore``): a restart signs
everyone out, and several API processes behind one address need sticky sessions
(docs/CONSOLE.md). The session keeps the key's :class:`~projection.db.apikeys.Caller`, never the key;
every page asks the database whether that key is still unrevoked (:func:`session_caller`), so a
revoked key's session ends at its next request. Forms that change something carry the session's
CSRF token (the cookie is ``SameSite=Lax``, which a top-level cross-site POST would not stop
for older browsers; the token does).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from fastapi import Request

from projection.db.apikeys import Caller

COOKIE = "compute_console"
COOKIE_PATH = "/console"


class NotSignedIn(Exception):
    """The request has no live session: the page answers with the sign-in form."""


@dataclass
class Session:
    caller: Caller
    expires_at: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))


@dataclass
class _Link:
    caller: Caller
    expires_at: float


class SessionStore:
    """Sessions by cookie value and one-time login links by token, both with an expiry.
    Bounded: past ``max_entries`` the expired ones are dropped, then the oldest."""

    def __init__(self, session_s: float, link_s: float, max_entries: int = 10_000) -> None:
        self._session_s, self._link_s, self._max = session_s, link_s, max_entries
        self._sessions: dict[str, Session] = {}
        self._links: dict[str, _Link] = {}

    def open(self, caller: Caller) -> tuple[str, Session]:
        self._bound(self._sessions)
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = session = Session(caller, time.monotonic() + self._session_s)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        session = self._sessions.get(sid or "")
        if session is None:
            return None
        if time.monotonic() >= session.expires_at:
            del self._sessions[sid or ""]
            return None
        return session

    def close(self, sid: str | None) -> None:
        self._sessions.pop(sid or "", None)

    def forget_key(self, key_id: str | None) -> None:
        """End the sessions of a revoked key (None: of every key)."""
        for sid in [s for s, v in self._sessions.items() if key_id is None or v.caller.key_id == key_id]:
            del self._sessions[sid]

    def issue_link(self, caller: Caller) -> str:
        self._bound(self._links)
        token = secrets.token_urlsafe(32)
        self._links[token] = _Link(caller, time.monotonic() + self._link_s)
        return token

    def redeem_link(self, token: str) -> Caller | None:
        """The link's caller, once: the token is gone afterwards, used or expired."""
        link = self._links.pop(token, None)
        if link is None or time.monotonic() >= link.expires_at:
            return None
        return link.caller

    def _bound(self, entries: dict) -> None:  # type: ignore[type-arg]
        if len(entries) < self._max:
            return
        now = time.monotonic()
        for k in [k for k, v in entries.items() if now >= v.expires_at]:
            del entries[k]
        while len(entries) >= self._max:
            del entries[next(iter(entries))]


def check_csrf(session: Session, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(session.csrf, token)


async def session_caller(request: Request) -> tuple[Caller, Session]:
    """The signed-in caller, its key checked unrevoked now; NotSignedIn otherwise."""
    store: SessionStore = request.app.state.console.sessions
    sid = request.cookies.get(COOKIE)
    session = store.get(sid)
    if session is None:
        raise NotSignedIn
    async with request.app.state.pool.connection() as conn:
        cur = await conn.execute("SELECT 1 FROM api_keys WHERE key_id = %s AND NOT revoked",
                                 (session.caller.key_id,))
        live = await cur.fetchone()
    if live is None:
        store.close(sid)
        raise NotSignedIn
    return session.caller, session
