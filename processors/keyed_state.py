"""The rules every keyed-state agent shares: the orchestrator's ``orchestrate`` and the workflow
engine's ``run_workflows`` (processors/orchestrator.py, processors/workflows.py).

    <source topic> ──agent──> table ══ changelog: <state topic> (compacted; one record per change)
          └─ unreadable, or its handling raised ──> <source topic>.dlq (error headers)

Each record of the source topic, keyed by the entity id, goes through the same steps:

1. read it; a record that cannot be read is dead-lettered and skipped;
2. decode the entity's current state from the table and apply the record (the caller's
   ``apply``, which carries out and flushes the effects). A :class:`DeliveryError` (the broker
   refused an effect's record) stops the app before a commit covers it, so the next start
   replays the record; any other error dead-letters the record (one bad record never stops the
   agent);
3. a state whose version changed goes to the table, then to its changelog (the state topic, the
   source record's partition: the two are co-partitioned), with ``on_delivered`` checking the
   delivery (app.py's: crash on a failure).

Each install says only what is specific to it: the topics and table, how to read a record, how
to apply it, how to encode a state and its headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from producers.errors import DeliveryError
from schemas.kafka_settings import KafkaSettings

Headers = list[tuple[str, bytes]]
DeadLetterHeaders = Callable[[Any, Exception], Headers]
OnDelivered = Callable[[Any], None]


class Versioned(Protocol):
    @property
    def version(self) -> int: ...


S = TypeVar("S", bound=Versioned)
R = TypeVar("R")  # a record of the source topic, as read


class KeyedState(Generic[S]):
    """A table of ``S`` keyed by entity id whose changelog is a compacted state topic, fed by one
    agent on ``source`` (see the module doc). Build it in the install, then have the agent
    ``await keyed.run(stream, ...)``."""

    def __init__(self, app: Any, kafka: KafkaSettings, *, source: str, state_topic: str,
                 table: str, table_help: str, noun: str, log: logging.Logger,
                 decode: Callable[[bytes], S], encode: Callable[[S], bytes],
                 headers: Callable[[S], Headers], dead_letter_headers: DeadLetterHeaders,
                 on_delivered: OnDelivered, close: Callable[[], None]) -> None:
        """``noun`` names one entity in the logs (``generation``), ``log`` is the caller's
        logger; ``close`` (blocking) runs in a thread before the app shuts down."""
        self._app, self._state_name, self._noun, self._log = app, state_topic, noun, log
        self._table_name = table
        self._decode, self._encode, self._headers = decode, encode, headers
        self._dead_letter_headers, self._on_delivered = dead_letter_headers, on_delivered
        self.source = app.topic(source, partitions=kafka.partitions)
        state = app.topic(state_topic, partitions=kafka.partitions, key_type=str, value_type=bytes,
                          compacting=True, acks=False)
        self._dlq = app.topic(kafka.topics.dlq(source), partitions=kafka.partitions)
        # The state topic is the table's changelog: one record per change serves both.
        self.table = app.Table(table, partitions=kafka.partitions, key_type=str, value_type=bytes,
                               changelog_topic=state, help=table_help)

        async def on_shutdown(app: Any = None, **_: Any) -> None:
            await asyncio.to_thread(close)

        app.on_before_shutdown.connect(on_shutdown)

    async def dead_letter(self, message: Any, error: Exception) -> None:
        """Copy ``message`` to the source's DLQ with the error headers."""
        self._log.warning("%s record %s[%d]@%d dead-lettered: %s", self._table_name, message.topic,
                          message.partition, message.offset, error)
        await self._dlq.send(key=message.key, value=message.value,
                             headers=self._dead_letter_headers(message, error))

    async def publish(self, key: str, state: S, partition: int) -> None:
        """Write ``state`` to the table, then to its changelog on ``partition``."""
        document = self._encode(state)
        self.table.data[key] = document  # the table: local store...
        delivery = await self._app.producer.send(  # ...and its changelog, the state topic
            self._state_name, key.encode(), document, partition, None, self._headers(state))
        delivery.add_done_callback(self._on_delivered)

    async def run(self, stream: Any, *, read: Callable[[Any], tuple[str, R]],
                  unreadable: type[Exception],
                  apply: Callable[[S | None, R], Awaitable[S | None]]) -> None:
        """The agent's loop: ``read(message)`` gives (entity id, record) or raises
        ``unreadable``; ``apply(current, record)`` gives the new state, or None when nothing
        changed."""
        async for event in stream.events():
            message = event.message
            try:
                key, incoming = read(message)
            except unreadable as exc:
                await self.dead_letter(message, exc)
                continue
            try:
                document = self.table.data.get(key)
                current = None if document is None else self._decode(document)
                state = await apply(current, incoming)
            except DeliveryError as exc:
                # Stop before a commit covers effects the broker never got; the next start
                # replays this record.
                self._log.error("%s %s: effects not delivered, stopping: %s", self._noun, key, exc)
                await self._app.crash(exc)
                return
            except Exception as exc:  # never stop on one record: keep it for an operator
                self._log.exception("%s %s: record not applied", self._noun, key)
                await self.dead_letter(message, exc)
                continue
            if state is None or (current is not None and state.version == current.version):
                continue  # a state is written only when its version changed
            await self.publish(key, state, message.partition)
