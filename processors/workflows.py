"""The workflow engine: the agent ``run_workflows`` and the I/O of workflow effects.

    <prefix>.workflows ──run_workflows──> workflows table ══ changelog: <prefix>.workflows.state
      ▲  WorkflowRequested, WorkflowCommandRequested         │             (compacted, WorkflowState)
      │  (producers/workflows.py: the API, computectl)       └─> effects: the steps' tasks
      └─ final states of the steps' tasks (fold_status,          (TaskProducer), cancels
         keyed by workflow id)                                    (<prefix>.tasks.control)

Every decision is :mod:`workflows.record`'s (pure functions returning ``(state, effects)``);
this module decodes what arrives, calls them, and carries out the effects:

* :class:`~workflows.record.SubmitStep` → ``TaskProducer.submit`` (the step's task id, params and
  orchestration; the workflow's origin), through the generations orchestrator's
  :class:`~processors.orchestrator.Outbox` (one of its own);
* :class:`~workflows.record.CancelStep` → a ``CancelRequested`` (event id
  ``flow.cancel_event_id(task id)``) to the control topic, which the workers act on.

A step is an ordinary task, so a step's task has the tasks' guarantees: its retry policy and
lease (processors/app.py) act below the workflow, which sees only the task's *final* state.
``fold_status`` sends that state here because the task's ``generation_id`` is a workflow id
(:func:`schemas.workflow_events.is_workflow_id`).

At least once: the effects' records are flushed (and acknowledged) before the new state goes to
the table and its changelog, and Faust commits the offset only after that. A replay after a
crash repeats effects whose ids are deterministic (``step_task_id``, the cancel event ids),
which the fold and the readers absorb; the state machine ignores repeats. A record the broker
refuses stops the app, so no commit covers it. A workflow's terminal status is never left
(exactly one terminal state).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from generations.flow import EVALUATION_SOURCE, cancel_event_id
from processors.folding import STATE_CONTENT_TYPE, decode_state
from processors.keyed_state import DeadLetterHeaders, KeyedState, OnDelivered
from processors.orchestrator import Outbox
from schemas.codec import EventCodec
from schemas.errors import ComputeError
from schemas.events import CancelRequested, Envelope
from schemas.headers import Headers, header_builder, new_traceparent, task_trace_id
from schemas.kafka_settings import KafkaSettings
from schemas.workflow_events import WorkflowCommandRequested, WorkflowRequested, WorkflowState
from state.lifecycle import TaskState
from workflows import record
from workflows.record import CancelStep, Effect, SubmitStep

log = logging.getLogger("processors.workflows")

T = TypeVar("T")
_ACK_TIMEOUT_S = 30.0
_SOURCE = "processors"
_STATE_IDS = uuid.UUID("0f7c0f0e-5b43-4a87-9a39-7d1c1b7e2f64")  # ce_id of each state version

Incoming = WorkflowRequested | WorkflowCommandRequested | TaskState


class BadWorkflowRecord(ComputeError):
    """A record on the workflows topic cannot be read (see the message). It is copied to
    ``<prefix>.workflows.dlq`` with error headers and skipped; fix the writer."""


def _header(headers: Any, name: str) -> bytes | None:
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for key, value in items:
        if key == name:
            return value if isinstance(value, bytes) else str(value).encode()
    return None


def read_workflow_message(codec: EventCodec, key: bytes | str | None, value: bytes | None,
                          headers: Any) -> Incoming:
    """Decode one record of the workflows topic: a request or a command (Avro), or a step task's
    final state (JSON, ``content-type`` :data:`STATE_CONTENT_TYPE`, as ``fold_status`` writes
    it). Raise :class:`BadWorkflowRecord` when it must be dead-lettered: unreadable, another
    record type, or keyed by something other than its workflow id."""
    if value is None:
        raise BadWorkflowRecord("record has no value (a tombstone on the workflows topic)")
    decoded: Incoming
    try:
        if _header(headers, "content-type") == STATE_CONTENT_TYPE or value[:1] == b"{":
            state = decode_state(value)
            assert state is not None
            decoded, workflow_id = state, state.generation_id
        else:
            event = codec.decode(value)
            if not isinstance(event, WorkflowRequested | WorkflowCommandRequested):
                raise BadWorkflowRecord(f"a {event.avro_name} record on the workflows topic")
            decoded, workflow_id = event, event.workflow_id
    except BadWorkflowRecord:
        raise
    except (ComputeError, ValueError, KeyError, TypeError) as exc:
        raise BadWorkflowRecord(f"unreadable record: {type(exc).__name__}: {exc}") from None
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    if workflow_id is None or key != workflow_id:
        raise BadWorkflowRecord(f"record keyed {key!r} belongs to workflow {workflow_id}: the "
                                "workflows topic is keyed by workflow id")
    return decoded


def state_headers(state: WorkflowState) -> Headers:
    """CloudEvents headers of a state record (a deterministic ``ce_id`` per version)."""
    event_id = str(uuid.uuid5(_STATE_IDS, f"{state.workflow_id}/{state.version}"))
    return header_builder(state.avro_name, _SOURCE)(
        event_id, new_traceparent(task_trace_id(state.workflow_id)))


class WorkflowEngine:
    """Carries out the effects of :mod:`workflows.record`. Blocking calls of the outbox run in
    the engine's one I/O thread (the producers are not thread-safe)."""

    def __init__(self, outbox: Outbox, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._outbox = outbox
        self._clock = clock
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="workflows-io")

    async def _in_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def apply(self, current: WorkflowState | None, incoming: Incoming) -> WorkflowState | None:
        """The state after ``incoming``; None when nothing changed (a repeat, an unknown
        workflow, a command that does not apply). Raises DeliveryError when the broker refused
        an effect's record."""
        now = self._clock()
        if isinstance(incoming, WorkflowRequested):
            if current is not None:
                log.info("workflow %s already requested; request ignored", current.workflow_id)
                return None
            state, effects = record.create(incoming, now)
        elif current is None:
            what = (f"command {incoming.command.value}" if isinstance(incoming, WorkflowCommandRequested)
                    else f"final state of task {incoming.task_id}")
            log.warning("%s for unknown workflow %s ignored", what,
                        incoming.workflow_id if isinstance(incoming, WorkflowCommandRequested)
                        else incoming.generation_id)
            return None
        elif isinstance(incoming, WorkflowCommandRequested):
            state, effects = record.apply_command(current, incoming, now)
            if state.version == current.version:
                log.info("workflow %s is %s: %s ignored", current.workflow_id,
                         current.status.value, incoming.command.value)
        else:
            state, effects = record.on_task_final(current, incoming, now)
        await self.carry_out(state, effects)
        if current is not None and state.version == current.version:
            return None
        return state

    async def carry_out(self, state: WorkflowState, effects: Iterable[Effect]) -> None:
        origin = (state.spec.origin_instance, state.origin_zone, state.origin_tenant_id)
        wrote = False
        for effect in effects:
            if isinstance(effect, SubmitStep):
                await self._in_io(self._outbox.submit, effect, origin)
            elif isinstance(effect, CancelStep):
                await self._in_io(self._outbox.cancel, self._cancel_event(state, effect))
            else:
                raise TypeError(f"unknown effect {effect!r}")
            wrote = True
        if wrote:
            await self._in_io(self._outbox.flush)

    def _cancel_event(self, state: WorkflowState, effect: CancelStep) -> CancelRequested:
        envelope = Envelope(event_id=cancel_event_id(effect.task_id), task_id=effect.task_id,
                            task_type=effect.task_type, attempt=1, occurred_at=self._clock(),
                            source=EVALUATION_SOURCE, origin_instance=state.spec.origin_instance,
                            origin_zone=state.origin_zone, origin_tenant_id=state.origin_tenant_id)
        return CancelRequested(envelope=envelope, reason=effect.reason,
                               requested_by=f"workflow {state.workflow_id}")

    def close(self) -> None:
        try:
            self._io.submit(self._outbox.close).result(_ACK_TIMEOUT_S * 2)
        finally:
            self._io.shutdown(wait=False)


def install(app: Any, kafka: KafkaSettings, engine: WorkflowEngine, codec: EventCodec, *,
            dead_letter_headers: DeadLetterHeaders, on_delivered: OnDelivered) -> Any:
    """Add the ``workflows`` table and the ``run_workflows`` agent to ``app``; returns the table.
    ``on_delivered`` checks each changelog record's delivery (app.py's: crash on a failure).
    The steps every keyed-state agent shares are :class:`processors.keyed_state.KeyedState`'s."""
    topics = kafka.topics

    def decode(document: bytes) -> WorkflowState:
        return cast(WorkflowState, codec.decode(document, expect=WorkflowState))

    keyed: KeyedState[WorkflowState] = KeyedState(
        app, kafka, source=topics.workflows, state_topic=topics.workflows_state,
        table="workflows", table_help="workflow id -> its WorkflowState (framed Avro)",
        noun="workflow", log=log, decode=decode, encode=codec.encode, headers=state_headers,
        dead_letter_headers=dead_letter_headers, on_delivered=on_delivered, close=engine.close)

    def read(message: Any) -> tuple[str, Incoming]:
        incoming = read_workflow_message(codec, message.key, message.value, message.headers)
        workflow_id = (incoming.generation_id if isinstance(incoming, TaskState)
                       else incoming.workflow_id)
        assert workflow_id is not None  # read_workflow_message checked it
        return workflow_id, incoming

    @app.agent(keyed.source, name="run_workflows")
    async def run_workflows(stream: Any) -> None:
        await keyed.run(stream, read=read, unreadable=BadWorkflowRecord, apply=engine.apply)

    return keyed.table
