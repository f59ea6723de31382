"""The rules every keyed-state agent shares (processors/keyed_state.py), on a recording stand-in
for the Faust app: what goes to the dead letters, what stops the app, and what is published
where. The broker tests (test_generations_app.py, test_workflows_app.py) run the same loop on
the real broker through the two agents that use it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from processors.keyed_state import KeyedState
from producers.errors import DeliveryError
from schemas.kafka_settings import KafkaSettings


@dataclass(frozen=True)
class Doc:
    key: str
    version: int


class Unreadable(Exception):
    pass


@dataclass
class Recorder:
    """The parts of a Faust app KeyedState touches, each call written down in order."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    shutdown: list[Any] = field(default_factory=list)
    tables: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.on_before_shutdown = SimpleNamespace(connect=self.shutdown.append)
        self.producer = SimpleNamespace(send=self._send)

    def topic(self, name: str, **options: Any) -> Any:
        async def send(**record: Any) -> None:
            self.calls.append(("dlq", name, record["key"], record["value"], record["headers"]))

        return SimpleNamespace(name=name, options=options, send=send)

    def Table(self, name: str, **options: Any) -> Any:  # noqa: N802 (Faust's name)
        table = self.tables[name] = SimpleNamespace(name=name, options=options, data={})
        return table

    async def _send(self, topic: str, key: bytes, value: bytes, partition: int, timestamp: Any,
                    headers: Any) -> Any:
        in_table = self.tables["things"].data.get(key.decode()) == value  # written first
        self.calls.append(("changelog", topic, key, value, partition, headers, in_table))
        return SimpleNamespace(add_done_callback=lambda fn: self.calls.append(("callback", fn)))

    async def crash(self, exc: BaseException) -> None:
        self.calls.append(("crash", exc))


def message(key: bytes, value: bytes, partition: int = 1, offset: int = 0) -> Any:
    return SimpleNamespace(key=key, value=value, partition=partition, offset=offset,
                           topic="p.things", headers=[("h", b"v")])


def stream(messages: list[Any]) -> Any:
    async def events() -> AsyncIterator[Any]:
        for m in messages:
            yield SimpleNamespace(message=m)

    return SimpleNamespace(events=events)


def decode(document: bytes) -> Doc:
    key, version = document.decode().split("/")
    return Doc(key, int(version))


def run(messages: list[Any], table: dict[str, bytes] | None = None) -> tuple[Recorder, Any]:
    app = Recorder()
    kafka = KafkaSettings(topic_prefix="p", partitions=2)

    def delivered(delivery: Any) -> None:
        pass

    keyed: KeyedState[Doc] = KeyedState(
        app, kafka, source="p.things", state_topic="p.things.state", table="things",
        table_help="thing id -> its Doc", noun="thing", log=logging.getLogger("test"),
        decode=decode,
        encode=lambda d: f"{d.key}/{d.version}".encode(),
        headers=lambda d: [("ce_id", f"{d.key}/{d.version}".encode())],
        dead_letter_headers=lambda m, e: [("error.class", type(e).__name__.encode())],
        on_delivered=delivered, close=lambda: None)
    keyed.table.data.update(table or {})

    def read(m: Any) -> tuple[str, str]:
        if m.value == b"junk":
            raise Unreadable("not a thing")
        return m.key.decode(), m.value.decode()

    async def apply(current: Doc | None, incoming: str) -> Doc | None:
        if incoming == "boom":
            raise RuntimeError("a bug")
        if incoming == "refused":
            raise DeliveryError([("t", "refused")])
        if incoming == "same":
            return current
        if incoming == "none":
            return None
        return Doc(incoming, (current.version if current else 0) + 1)

    asyncio.run(keyed.run(stream(messages), read=read, unreadable=Unreadable, apply=apply))
    return app, delivered


def test_the_table_and_topics_are_laid_out_as_a_compacted_changelog() -> None:
    app, _ = run([])
    table = app.tables["things"]
    state = table.options["changelog_topic"]
    assert state.name == "p.things.state"
    assert state.options == {"partitions": 2, "key_type": str, "value_type": bytes,
                             "compacting": True, "acks": False}
    assert table.options["partitions"] == 2 and table.options["help"] == "thing id -> its Doc"
    assert len(app.shutdown) == 1  # the close hook


def test_a_changed_state_goes_to_the_table_then_its_changelog_on_the_source_partition() -> None:
    app, delivered = run([message(b"a", b"a", partition=1), message(b"b", b"same"),
                          message(b"c", b"none")], table={"b": b"b/3"})
    assert app.tables["things"].data == {"a": b"a/1", "b": b"b/3"}
    assert app.calls == [("changelog", "p.things.state", b"a", b"a/1", 1, [("ce_id", b"a/1")], True),
                         ("callback", delivered)]


def test_unreadable_and_failing_records_are_dead_lettered_and_the_agent_goes_on() -> None:
    app, _ = run([message(b"x", b"junk"), message(b"y", b"boom"), message(b"z", b"z")])
    assert app.calls[:2] == [("dlq", "p.things.dlq", b"x", b"junk", [("error.class", b"Unreadable")]),
                             ("dlq", "p.things.dlq", b"y", b"boom", [("error.class", b"RuntimeError")])]
    assert app.calls[2][:4] == ("changelog", "p.things.state", b"z", b"z/1")


def test_an_undelivered_effect_crashes_the_app_and_stops_the_agent() -> None:
    app, _ = run([message(b"r", b"refused"), message(b"z", b"z")])
    [(what, exc)] = app.calls  # nothing after the crash: the next start replays the record
    assert what == "crash" and isinstance(exc, DeliveryError)
    assert app.tables["things"].data == {}
