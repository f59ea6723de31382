"""What routes depend on, as types: ``DbDep``, ``ProducerDep``, ``CallerDep``, ``SettingsDep``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import psycopg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from state.api.gateway import TaskGateway
from state.api.metrics import ApiMetrics
from state.api.monitoring import KafkaMonitor
from state.api.notifier import EventNotifier
from state.api.problems import ApiProblem
from state.api.settings import ApiSettings
from state.db.apikeys import Caller, verify_key
from state.db.pool import AsyncPool


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def get_pool(request: Request) -> AsyncPool:
    return request.app.state.pool


async def get_db(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:
    """A pooled connection for the duration of the route function (not of a streamed body)."""
    async with request.app.state.pool.connection() as conn:
        yield conn


def get_producer(request: Request) -> TaskGateway:
    return request.app.state.gateway


def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics


def get_monitor(request: Request) -> KafkaMonitor:
    return request.app.state.monitor


def get_notifier(request: Request) -> EventNotifier:
    return request.app.state.notifier


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
PoolDep = Annotated[AsyncPool, Depends(get_pool)]
DbDep = Annotated[psycopg.AsyncConnection, Depends(get_db, scope="function")]
ProducerDep = Annotated[TaskGateway, Depends(get_producer)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
NotifierDep = Annotated[EventNotifier, Depends(get_notifier)]
MonitorDep = Annotated[KafkaMonitor, Depends(get_monitor)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer csk_...`")


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller behind the Bearer key; 401 problem when missing, unknown or revoked."""
    challenge = {"WWW-Authenticate": 'Bearer realm="compute"'}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiProblem(401, "unauthorized", "an API key is required: Authorization: Bearer <key>",
                         headers=challenge)
    async with request.app.state.pool.connection() as conn:
        caller = await verify_key(conn, credentials.credentials)
    if caller is None:
        raise ApiProblem(401, "unauthorized", "the API key is unknown or revoked",
                         headers={**challenge, "WWW-Authenticate": 'Bearer error="invalid_token"'})
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
