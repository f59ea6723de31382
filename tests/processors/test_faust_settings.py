"""The Faust settings that make the fold cheaper per record (docs/PROCESSORS.md, "Benchmark")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust.streams
from faust.types import Message

from processors.app import _faust_settings
from processors.settings import ProcessorSettings
from processors.transport import PerRecordQuietMonitor, ProcessorsApp, RawBytesSchema
from schemas.kafka_settings import KafkaSettings


def test_the_app_takes_the_cython_fast_paths_and_the_quiet_monitor(tmp_path: Path) -> None:
    settings = _faust_settings(KafkaSettings(bootstrap_servers="127.0.0.1:9"),
                               ProcessorSettings(datadir=tmp_path), "faust-settings-test")
    app = ProcessorsApp("faust-settings-test", fetch_min_bytes=1, fetch_max_wait_ms=1, **settings)
    assert app.conf.cython_optimizations is True
    # The setting does nothing without faust's compiled extensions: a source-built faust
    # would silently lose the fast path, so say so here.
    assert faust.streams._CStreamIterator is not None
    assert isinstance(app.monitor, PerRecordQuietMonitor)


def test_the_quiet_monitor_skips_per_record_statistics_but_keeps_commits() -> None:
    monitor = PerRecordQuietMonitor()
    tp = faust.types.TP("t", 0)
    monitor.on_message_in(tp, 5, object())
    assert monitor.on_stream_event_in(tp, 5, object(), object()) is None
    monitor.on_stream_event_out(tp, 5, object(), object(), None)
    monitor.on_message_out(tp, 5, object())
    assert monitor.on_send_initiated(object(), "t", object(), 1, 2) is None
    monitor.on_send_completed(object(), None, object())
    assert (monitor.messages_received_total, monitor.events_total, monitor.messages_sent) == (0, 0, 0)
    assert not monitor.send_latency and not monitor.events_runtime
    state = monitor.on_commit_initiated(object())  # once per commit: still measured
    monitor.on_commit_completed(object(), state)
    assert len(monitor.commit_latency) == 1


def test_the_raw_bytes_schema_hands_the_agent_the_broker_bytes(tmp_path: Path) -> None:
    settings = _faust_settings(KafkaSettings(bootstrap_servers="127.0.0.1:9"),
                               ProcessorSettings(datadir=tmp_path), "faust-schema-test")
    app = ProcessorsApp("faust-schema-test", fetch_min_bytes=1, fetch_max_wait_ms=1, **settings)
    topic = app.topic("t", schema=RawBytesSchema())
    message = Message("t", 0, 7, 0.0, 0, [("h", b"1")], b"task-1", b"\xc3\x01avro", None)
    event = asyncio.run(topic.decode(message, propagate=True))
    assert (event.key, event.value, event.message) == (b"task-1", b"\xc3\x01avro", message)
