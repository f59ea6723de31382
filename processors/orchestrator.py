"""The generations orchestrator: the agent ``orchestrate`` and the I/O of generation effects.

    <prefix>.generations ──orchestrate──> generations table ══ changelog: <prefix>.generations.state
      ▲  GenerationRequested (producers)        │                              (compacted)
      └─ final task states (fold_status)        └─> effects: tasks (TaskProducer), evaluations
                                                    (<prefix>.evaluations), evaluators

Every decision is :mod:`generations.flow`'s (pure functions returning ``(record,
effects)``); this module only decodes what arrives (:mod:`processors.generation_messages`),
calls them, and carries out the effects:

* :class:`~generations.flow.SubmitTask` → ``producers.submit.TaskProducer.submit``
  (its id and orchestration; the generation's origin);
* :class:`~generations.flow.Evaluate` → the evaluator ``provider`` names in the
  :class:`~processors.evaluators.EvaluatorRegistry`. An in-process :class:`Evaluator`: fetch the
  image (``gpu_consumers.inputs.InputFetcher``: limits, private-address rule) and score it in a
  thread → ``on_evaluation``. A :class:`TaskEvaluator` (``vlm``, ``clip``, ``quality+clip``):
  ``request(image_url, context)`` → ``start_judging`` (its judge task is one more SubmitTask);
  a :class:`CombinedEvaluator` that does not ``apply`` to the attempt: its ``local`` part
  in-process, as above;
* :class:`~generations.flow.ParseJudgement` → ``evaluator.parse`` → ``on_evaluation``.
  A :class:`CombinedEvaluator`: the image is fetched and scored by its ``local`` part in a
  thread, and ``combine`` makes the evaluation. An answer with no score
  (:class:`UnparseableJudgement`): the image is scored by the weight-free evaluator (the
  combined one's ``local``, else ``quality``) with a first reason saying why;
* :class:`~generations.flow.EmitEvaluation` → ``schemas.emit.produce_event`` to the
  evaluations topic (Avro, CloudEvents headers), keyed by the attempt's task id;
* :class:`~generations.flow.CancelTask` → a ``CancelRequested`` (event id
  ``cancel_event_id(task id)``, the request's reason and requested_by) to the control topic,
  which the workers act on. A :class:`~generations.plan.GenerationCancelRequested` on the
  generations topic leads to these (``flow.cancel``); one for an unknown generation is ignored.

The effects of ``on_evaluation`` / ``start_judging`` are carried out right after the effect that
caused them (depth first) until none is left. An evaluator that fails (unknown provider, image
refused or unreadable) scores 0.0 with a reason naming the error: the loop goes on and the
failure is visible in the record and on the evaluations stream.

At least once: the effects' records are flushed (and acknowledged) before the new record goes
to the table and its changelog, and Faust commits the offset only after that. A replay after a
crash repeats effects whose ids are deterministic (task ids, evaluation event ids), which the
fold and the readers absorb. A record the broker refuses stops the app, so no commit covers it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from confluent_kafka import Producer
from PIL import Image

from generations import flow
from generations.flow import CancelTask, EmitEvaluation, Evaluate, ParseJudgement, SubmitTask
from generations.plan import GenerationCancelRequested, GenerationRequested
from generations.record import GenerationRecord, decode_record, encode_record
from processors.evaluators.base import (
    WEIGHT_FREE,
    CombinedEvaluator,
    Evaluation,
    EvaluationContext,
    Evaluator,
    EvaluatorRegistry,
    EvaluatorSettings,
    TaskEvaluator,
    UnparseableJudgement,
)
from processors.generation_messages import (
    BadGenerationRecord,
    Incoming,
    read_generation_message,
    record_headers,
)
from processors.keyed_state import DeadLetterHeaders, KeyedState, OnDelivered
from producers.errors import DeliveryError
from schemas.codec import EventCodec
from schemas.emit import produce_event
from schemas.events import CancelRequested, Envelope, EvaluationRecorded
from schemas.kafka_settings import KafkaSettings
from state.lifecycle import TaskState

log = logging.getLogger("processors.orchestrator")

T = TypeVar("T")
FetchImage = Callable[[str], Image.Image]

_ACK_TIMEOUT_S = 30.0
# Evaluations are few (one per AGENTIC attempt): an idempotent producer, batched a little.
_PRODUCER = {"enable.idempotence": True, "acks": "all", "linger.ms": 5}


# --------------------------------------------------------------------------- the outbox


class Outbox:
    """The confluent-kafka side: task records (``TaskProducer``), evaluation events and cancels.
    Not thread-safe: the orchestrator calls it from one thread only."""

    def __init__(self, kafka: KafkaSettings, codec: EventCodec, source: str = "processors") -> None:
        self._kafka, self._codec, self._source = kafka, codec, source
        self._tasks: Any = None
        self._events: Producer | None = None
        self._failures: list[tuple[str, str]] = []

    def _task_producer(self) -> Any:
        if self._tasks is None:  # created in the I/O thread: it may publish schemas (blocking)
            from producers.submit import TaskProducer

            self._tasks = TaskProducer(self._kafka, codec=self._codec, source=self._source)
        return self._tasks

    def submit(self, task: Any, origin: tuple[str | None, str | None, str | None]) -> None:
        from producers.submit import Origin

        self._task_producer().submit(task.task_type, task.params, task_id=task.task_id,
                                     orchestration=task.orchestration, origin=Origin(*origin))

    def emit(self, event: EvaluationRecorded) -> None:
        self._produce(self._kafka.topics.evaluations, event)

    def cancel(self, event: CancelRequested) -> None:
        """Ask the workers to stop ``event.envelope.task_id`` (the control topic)."""
        self._produce(self._kafka.topics.control, event)

    def _produce(self, topic: str, event: EvaluationRecorded | CancelRequested) -> None:
        if self._events is None:
            self._events = Producer({**self._kafka.producer_config(), **_PRODUCER})
        task_id = event.envelope.task_id

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                self._failures.append((task_id, err.str()))

        produce_event(self._events, topic, event, codec=self._codec, on_delivery=delivered)

    def flush(self, timeout_s: float = _ACK_TIMEOUT_S) -> None:
        """Wait for every record; raise :class:`DeliveryError` if the broker refused any."""
        if self._tasks is not None:
            self._tasks.flush(timeout_s)
        if self._events is not None:
            left = self._events.flush(timeout_s)
            failures, self._failures = self._failures, []
            if left:
                failures.append(("(queue)", f"{left} evaluation or cancel record(s) undelivered "
                                            f"after {timeout_s}s"))
            if failures:
                raise DeliveryError(failures)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._tasks = self._events = None


# --------------------------------------------------------------------------- the effects


def failed_evaluation(provider: str, error: BaseException) -> Evaluation:
    """What an evaluator that raised gives the loop: 0.0, and the error as the reason."""
    return Evaluation(0.0, (f"evaluation failed: {type(error).__name__}: {error}"[:500],),
                      {}, provider)


class Orchestrator:
    """Carries out the effects of :mod:`generations.flow` (see the module doc).

    A blocking call of the outbox runs in the orchestrator's one I/O thread (the producers are not
    thread-safe); evaluations run in the loop's default executor."""

    def __init__(self, outbox: Outbox, registry: EvaluatorRegistry,
                 evaluator_settings: EvaluatorSettings, fetch_image: FetchImage, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._outbox = outbox
        self._registry = registry
        self._evaluator_settings = evaluator_settings
        self._fetch_image = fetch_image
        self._clock = clock
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orchestrator-io")
        self._evaluators: dict[str, Evaluator | TaskEvaluator] = {}

    async def _in_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def evaluator(self, provider: str) -> Evaluator | TaskEvaluator:
        """The evaluator ``provider`` names (one instance per name); raises UnknownEvaluator."""
        found = self._evaluators.get(provider)
        if found is None:
            found = self._evaluators[provider] = self._registry.resolve(
                provider, self._evaluator_settings)
        return found

    # ---- entry points (one per kind of record)

    async def on_request(self, current: GenerationRecord | None,
                         request: GenerationRequested) -> GenerationRecord | None:
        """The record after a request; None when the generation exists already (a repeat)."""
        if current is not None:
            log.info("generation %s already started; request ignored", current.generation_id)
            return None
        record, effects = flow.start(request, now=self._clock())
        return await self.carry_out(record, effects)

    async def on_task_final(self, current: GenerationRecord | None,
                            state: TaskState) -> GenerationRecord | None:
        if current is None:
            log.warning("final state of task %s for unknown generation %s ignored",
                        state.task_id, state.generation_id)
            return None
        record, effects = flow.on_task_final(current, state, now=self._clock())
        return await self.carry_out(record, effects)

    async def on_cancel(self, current: GenerationRecord | None,
                        request: GenerationCancelRequested) -> GenerationRecord | None:
        """The record after a cancel; None for an unknown generation (nothing to cancel)."""
        if current is None:
            log.warning("cancel of unknown generation %s ignored", request.generation_id)
            return None
        record, effects = flow.cancel(current, request, now=self._clock())
        return await self.carry_out(record, effects)

    # ---- the effects

    async def carry_out(self, record: GenerationRecord, effects: Iterable[flow.Effect]
                        ) -> GenerationRecord:
        """Carry out ``effects`` in order (and those they lead to), then flush; the record as
        it ends up. Raises DeliveryError when the broker refused a record."""
        pending: deque[flow.Effect] = deque(effects)
        origin = (record.origin_instance, record.origin_zone, record.origin_tenant_id)
        wrote = False
        while pending:
            effect = pending.popleft()
            more: list[flow.Effect] = []
            if isinstance(effect, SubmitTask):
                await self._in_io(self._outbox.submit, effect.task, origin)
                wrote = True
            elif isinstance(effect, EmitEvaluation):
                await self._in_io(self._outbox.emit, effect.event)
                wrote = True
            elif isinstance(effect, CancelTask):
                await self._in_io(self._outbox.cancel, self._cancel_event(record, effect))
                wrote = True
            elif isinstance(effect, Evaluate):
                record, more = await self._evaluate(record, effect)
            elif isinstance(effect, ParseJudgement):
                record, more = await self._parse(record, effect)
            else:
                raise TypeError(f"unknown effect {effect!r}")
            pending.extendleft(reversed(more))  # depth first: what it caused comes next
        if wrote:
            await self._in_io(self._outbox.flush)
        return record

    def _cancel_event(self, record: GenerationRecord, effect: CancelTask) -> CancelRequested:
        envelope = Envelope(event_id=flow.cancel_event_id(effect.task_id), task_id=effect.task_id,
                            task_type=effect.task_type, attempt=1, occurred_at=self._clock(),
                            source=flow.EVALUATION_SOURCE, origin_instance=record.origin_instance,
                            origin_zone=record.origin_zone, origin_tenant_id=record.origin_tenant_id)
        return CancelRequested(envelope=envelope, reason=effect.reason, requested_by=effect.requested_by)

    async def _evaluate(self, record: GenerationRecord, effect: Evaluate
                        ) -> tuple[GenerationRecord, list[flow.Effect]]:
        try:
            evaluator = self.evaluator(effect.provider)
            if isinstance(evaluator, CombinedEvaluator) and not evaluator.applies(effect.context):
                evaluator = evaluator.local
            if isinstance(evaluator, TaskEvaluator) and not isinstance(evaluator, Evaluator):
                params = evaluator.request(effect.image_url, effect.context)
                return flow.start_judging(record, effect.task_id, params, now=self._clock())
            evaluation = await self._score(evaluator, effect.image_url, effect.context)
        except Exception as exc:  # bad image, fetch refused, unknown provider, evaluator bug
            log.warning("evaluation of task %s (%s) failed: %s", effect.task_id, effect.provider, exc)
            evaluation = failed_evaluation(effect.provider, exc)
        return flow.on_evaluation(record, effect.task_id, evaluation, now=self._clock())

    async def _score(self, evaluator: Evaluator, image_url: str | None,
                     context: EvaluationContext) -> Evaluation:
        """``evaluator`` on the image at ``image_url``, fetched and scored in the executor."""
        if image_url is None:
            raise ValueError("the attempt has no image to score")

        def fetch_and_score() -> Evaluation:
            return evaluator.evaluate(self._fetch_image(image_url), context)

        return await asyncio.get_running_loop().run_in_executor(None, fetch_and_score)

    async def _parse(self, record: GenerationRecord, effect: ParseJudgement
                     ) -> tuple[GenerationRecord, list[flow.Effect]]:
        try:
            evaluator = self.evaluator(effect.provider)
            if not isinstance(evaluator, TaskEvaluator):
                raise TypeError(f"evaluator {effect.provider!r} does not judge by task")
            # A combined evaluator's in-process part both completes its verdict and stands in
            # for an answer with no score.
            local = evaluator.local if isinstance(evaluator, CombinedEvaluator) else None
            try:
                evaluation = evaluator.parse(effect.text, effect.context)
            except UnparseableJudgement as exc:
                log.warning("judgement of task %s (%s) has no score; the weight-free evaluator "
                            "scores it: %s", effect.task_id, effect.provider, exc)
                weight_free = local if local is not None else self.evaluator(WEIGHT_FREE)
                evaluation = await self._fall_back(evaluator, weight_free, effect, exc)
            else:
                if isinstance(evaluator, CombinedEvaluator) and local is not None:
                    scored = await self._score(local, effect.image_url, effect.context)
                    evaluation = evaluator.combine(evaluation, scored)
        except Exception as exc:  # image refused or unreadable, unknown provider, evaluator bug
            log.warning("judgement of task %s (%s) unusable: %s", effect.task_id, effect.provider, exc)
            evaluation = failed_evaluation(effect.provider, exc)
        return flow.on_evaluation(record, effect.task_id, evaluation, now=self._clock())

    async def _fall_back(self, judge: TaskEvaluator, weight_free: Evaluator | TaskEvaluator,
                         effect: ParseJudgement, error: UnparseableJudgement) -> Evaluation:
        """``weight_free``'s score of the attempt whose judge gave no score, the first reason
        saying so."""
        if not isinstance(weight_free, Evaluator):
            raise TypeError(f"the fallback evaluator {WEIGHT_FREE!r} is no in-process evaluator")
        scored = await self._score(weight_free, effect.image_url, effect.context)
        why = f"the {judge.name} judge gave no score ({str(error)[:240]}); scored by {weight_free.name}"
        return dataclasses.replace(scored, reasons=(why, *scored.reasons))

    def close(self) -> None:
        try:
            self._io.submit(self._outbox.close).result(_ACK_TIMEOUT_S * 2)
        finally:
            self._io.shutdown(wait=False)


# --------------------------------------------------------------------------- the agent


def install(app: Any, kafka: KafkaSettings, orchestrator: Orchestrator, *,
            dead_letter_headers: DeadLetterHeaders, on_delivered: OnDelivered) -> Any:
    """Add the ``generations`` table and the ``orchestrate`` agent to ``app``; returns the table.
    ``on_delivered`` checks each changelog record's delivery (app.py's: crash on a failure).
    The steps every keyed-state agent shares are :class:`processors.keyed_state.KeyedState`'s."""
    topics = kafka.topics
    keyed: KeyedState[GenerationRecord] = KeyedState(
        app, kafka, source=topics.generations, state_topic=topics.generations_state,
        table="generations", table_help="generation id -> its GenerationRecord's JSON document",
        noun="generation", log=log, decode=decode_record, encode=encode_record,
        headers=record_headers, dead_letter_headers=dead_letter_headers,
        on_delivered=on_delivered, close=orchestrator.close)

    def read(message: Any) -> tuple[str, Incoming]:
        incoming = read_generation_message(message.key, message.value, message.headers)
        generation_id = (incoming.plan.generation_id if isinstance(incoming, GenerationRequested)
                         else incoming.generation_id)
        assert generation_id is not None  # read_generation_message checked it
        return generation_id, incoming

    async def apply(current: GenerationRecord | None,
                    incoming: Incoming) -> GenerationRecord | None:
        if isinstance(incoming, GenerationRequested):
            return await orchestrator.on_request(current, incoming)
        if isinstance(incoming, GenerationCancelRequested):
            return await orchestrator.on_cancel(current, incoming)
        return await orchestrator.on_task_final(current, incoming)

    @app.agent(keyed.source, name="orchestrate")
    async def orchestrate(stream: Any) -> None:
        await keyed.run(stream, read=read, unreadable=BadGenerationRecord, apply=apply)

    return keyed.table
