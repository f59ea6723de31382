"""The processors' Faust app asks the broker for batched fetches (processors/transport.py)."""

from __future__ import annotations

import asyncio

import pytest

from processors.transport import ProcessorsApp

pytestmark = pytest.mark.integration


def test_the_consumer_fetches_with_the_configured_batching(kafka_bootstrap: str) -> None:
    async def fetcher_settings() -> tuple[int, int]:
        app = ProcessorsApp("transport-test", fetch_min_bytes=12345, fetch_max_wait_ms=77,
                            broker=f"kafka://{kafka_bootstrap}", web_enabled=False,
                            autodiscover=False)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        await consumer.start()  # against the real broker: the Fetcher is made here
        try:
            fetcher = consumer._fetcher
            return fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms
        finally:
            await consumer.stop()

    # aiokafka keeps these private: if an upgrade renames them, this fails instead of the
    # processors silently fetching one record at a time again.
    assert asyncio.run(fetcher_settings()) == (12345, 77)
