"""What routes depend on, as types: ``DbDep``, ``GatewayDep``, ``CallerDep``, ``SettingsDep``."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Annotated

import psycopg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.gateway import TaskGateway
from api.metrics import ApiMetrics
from api.monitoring import KafkaMonitor
from api.notifier import EventNotifier
from api.problems import ApiProblem
from api.settings import ApiSettings
from projection.db.apikeys import Caller, verify_key
from projection.db.pool import AsyncPool

# The accessors below are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in its thread pool, and a hop to a worker thread and back for each of them cost
# every request a thread wake-up or two (GET /tasks/{id} had three; docs/PERFORMANCE.md).


async def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def get_pool(request: Request) -> AsyncPool:
    return request.app.state.pool


async def get_db(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:
    """A pooled connection for the duration of the route function (not of a streamed body)."""
    async with request.app.state.pool.connection() as conn:
        yield conn


async def get_gateway(request: Request) -> TaskGateway:
    return request.app.state.gateway


async def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


async def get_monitor(request: Request) -> KafkaMonitor:
    return request.app.state.monitor


async def get_notifier(request: Request) -> EventNotifier:
    return request.app.state.notifier


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
PoolDep = Annotated[AsyncPool, Depends(get_pool)]
DbDep = Annotated[psycopg.AsyncConnection, Depends(get_db, scope="function")]
GatewayDep = Annotated[TaskGateway, Depends(get_gateway)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
NotifierDep = Annotated[EventNotifier, Depends(get_notifier)]
MonitorDep = Annotated[KafkaMonitor, Depends(get_monitor)]

class KeyCache:
    """Keys verified in the last ``ttl_s`` seconds, so a client's requests do not each pay a
    database round trip for the same key. Revoking a key notifies every API process, which
    forgets it at once (:meth:`forget`, called by the notifier); the TTL bounds how long a key
    could outlive its revocation were that notification lost. ``ttl_s`` 0 checks every request.
    Only accepted keys are kept, by their SHA-256 (never the secret), at most ``max_entries``."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[bytes, tuple[Caller, float]] = {}

    @staticmethod
    def fingerprint(key: str) -> bytes:
        return hashlib.sha256(key.encode()).digest()

    def get(self, fingerprint: bytes) -> Caller | None:
        entry = self._entries.get(fingerprint)
        if entry is None:
            return None
        if time.monotonic() >= entry[1]:
            del self._entries[fingerprint]
            return None
        return entry[0]

    def forget(self, key_id: str | None) -> None:
        """Drop the key ``key_id`` (None: every key), e.g. because it was revoked."""
        if key_id is None:
            self._entries.clear()
            return
        for fingerprint in [f for f, (c, _) in self._entries.items() if c.key_id == key_id]:
            del self._entries[fingerprint]

    def put(self, fingerprint: bytes, caller: Caller) -> None:
        if self._ttl_s <= 0:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # simple and bounded: the next requests re-verify
        self._entries[fingerprint] = (caller, time.monotonic() + self._ttl_s)


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer csk_...`")
_CHALLENGE = 'Bearer realm="compute"'
# Where authenticate() leaves the caller in the request's scope for get_caller to take.
_CALLER_SCOPE_KEY = "compute.caller"


async def authenticate(request: Request) -> Caller:
    """The caller behind the request's Bearer key; 401 problem when missing, unknown or revoked.
    Routes authenticate before they read a body (api/routing.py): 401 comes first."""
    caller = request.scope.get(_CALLER_SCOPE_KEY)
    if caller is not None:
        return caller
    scheme, _, key = (request.headers.get("authorization") or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiProblem(401, "unauthorized", "an API key is required: Authorization: Bearer <key>",
                         headers={"WWW-Authenticate": _CHALLENGE})
    cache: KeyCache = request.app.state.key_cache
    fingerprint = cache.fingerprint(key)
    caller = cache.get(fingerprint)
    if caller is None:
        async with request.app.state.pool.connection() as conn:
            caller = await verify_key(conn, key)
        if caller is None:
            raise ApiProblem(401, "unauthorized", "the API key is unknown or revoked",
                             headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        cache.put(fingerprint, caller)
    request.scope[_CALLER_SCOPE_KEY] = caller
    return caller


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller behind the Bearer key (``credentials`` puts the scheme in the OpenAPI document;
    the key is read by :func:`authenticate`)."""
    return await authenticate(request)


async def get_operator(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    """The caller, when its key is an operator key; 403 problem otherwise. Operator routes show
    the whole fleet (every tenant's figures, worker hosts): docs/SECURITY.md."""
    if not caller.operator:
        raise ApiProblem(403, "operator-only", "this route needs an operator key "
                         "(computectl apikey create --operator); tenant keys cannot read it")
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
OperatorDep = Annotated[Caller, Depends(get_operator)]
