"""Faust's aiokafka transport with the consumer's fetch batching set by our settings, and the
two lighter Faust parts the app plugs in through Faust's own settings: a ``Monitor`` without
per-record statistics and a raw-bytes ``Schema`` (docs/PROCESSORS.md, "Benchmark").

faust-streaming creates its aiokafka consumer with ``fetch_min_bytes`` 1 (aiokafka's default) and
no way to change it: the broker answers each fetch as soon as one record arrives. At a trickle of
tasks that is one fetch - of every assigned partition - per record, and one trip through Faust's
consumer thread, stream and agent per record: in bench/bench_api_latency.py the processors used
about a quarter of a core at 50 tasks/s, and their fetches were a good part of the broker's own
load, on two cores shared with the services whose latency is measured. Asking the broker to wait
up to ``fetch_max_wait_ms`` for ``fetch_min_bytes`` makes those records arrive in batches (the
agent batches them anyway, ``batch_within_s``), for a delay the fold does not mind: leases are
minutes long and an AGENTIC step is a model run. docs/PROCESSORS.md has the figures.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.sensors import Monitor
from faust.transport.drivers import aiokafka as driver


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads these when the consumer starts (its Fetcher is made in start()), so
        # setting them on the unstarted consumer is enough; aiokafka is pinned (pyproject.toml)
        # and tests/processors/test_transport.py checks that they reach the fetcher.
        consumer._fetch_min_bytes = self.app.fetch_min_bytes
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(driver.Transport):
    Consumer = _Consumer


class PerRecordQuietMonitor(Monitor):
    """Faust's ``Monitor`` sensor (the ``Monitor`` setting) without its per-record bookkeeping.

    The default Monitor runs on every record received, every stream event in and out, every
    record acknowledged and every record sent: counters keyed by stream and topic, a clock read
    and a latency deque per record, a dict per event. Those statistics are shown only by Faust's
    web views, which this app does not serve (``web_enabled=False``), yet they cost ≈ 8 % of the
    fold's CPU (bench/bench_fold.py, docs/PROCESSORS.md). The commit, rebalance and assignment
    hooks (once per commit or rebalance) stay as Faust has them."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any,
                            state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int,
                          valsize: int) -> None:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None


class RawBytesSchema(faust.Schema):
    """A topic's key and value as the bytes the broker sent: what the ``raw`` serializer yields,
    without the serializer registry's lookups per record (≈ 3 % of the fold's CPU). Faust
    documents overriding ``loads_key``/``loads_value`` of a ``faust.Schema`` for custom
    decoding; the agents decode (Avro) themselves, a batch at a time."""

    def loads_key(self, app: Any, message: Any, *, loads: Any = None,
                  serializer: Any = None) -> Any:
        return message.key

    def loads_value(self, app: Any, message: Any, *, loads: Any = None,
                    serializer: Any = None) -> Any:
        return message.value


class ProcessorsApp(faust.App):
    """A ``faust.App`` whose consumer fetches in batches: ``fetch_min_bytes`` or
    ``fetch_max_wait_ms``, whichever comes first."""

    def __init__(self, *args: Any, fetch_min_bytes: int, fetch_max_wait_ms: int, **kwargs: Any) -> None:
        self.fetch_min_bytes = fetch_min_bytes
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
