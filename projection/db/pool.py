"""A small asyncio pool of psycopg connections for the API process.

Connections are autocommit (reads are single statements; writes open ``conn.transaction()``).
A connection that broke while borrowed is closed and replaced on the next checkout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg.rows import dict_row

from projection.db.errors import DatabaseError


class AsyncPool:
    def __init__(self, database_url: str, *, max_size: int = 10, connect_timeout_s: float = 5.0) -> None:
        self._url = database_url
        self._max_size = max_size
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots = asyncio.Semaphore(max_size)
        self._closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """Borrow a connection (rows as dicts); waits while ``max_size`` are borrowed."""
        if self._closed:
            raise DatabaseError("the connection pool is closed")
        async with self._slots:
            conn = await self._checkout()
            try:
                yield conn
            finally:
                if conn.closed or conn.broken or self._closed:
                    await conn.close()
                else:
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        await conn.rollback()
                    self._idle.append(conn)

    async def _checkout(self) -> psycopg.AsyncConnection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and not conn.broken:
                return conn
        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, row_factory=dict_row,
            connect_timeout=max(1, int(self._connect_timeout_s)),
        )

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
