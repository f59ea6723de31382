"""A generation's progress, as pure functions: no I/O, no clock (``now`` is passed in).

The processors' orchestrator (``processors/orchestrator.py``) keeps one
:class:`~generations.record.GenerationRecord` per generation id in a Faust table and calls these functions with what arrives on the
generations topic; it carries out the :data:`Effect` list each returns, in order:

* :func:`start` — a :class:`generations.plan.GenerationRequested` arrived: the record is
  created and the plan's first tasks (or its prompt task) are submitted;
* :func:`on_task_final` — a task of the generation reached its *final* state (COMPLETED,
  FAILED or CANCELLED: a task's own retry is QUEUED for its next attempt, never FAILED; the fold
  forwards the terminals). What it means depends on the
  task's role: the prompt task (→ submit the waiting GENERATION tasks), an attempt of a
  prediction (BASE: the prediction's outcome; AGENTIC COMPLETED: :class:`Evaluate` it; AGENTIC
  FAILED: :func:`generations.agentic.on_attempt_finished` with ``Failed``), a vision-language
  judge's task (→ :class:`ParseJudgement`), a follow-up (DETAIL_ENHANCER after
  PRODUCT_ENHANCEMENT: the prediction's final result);
* :func:`on_evaluation` — the evaluator scored an attempt: :func:`generations.agentic.on_attempt_finished`
  with ``Completed(score, reasons)``; its action becomes an :class:`EmitEvaluation` (the
  evaluation stream, ``<prefix>.evaluations``) and a :class:`SubmitTask` (RETRY), or the
  prediction's outcome (ACCEPT / ACCEPT_BEST / GIVE_UP);
* :func:`start_judging` — the evaluator is a task evaluator (``vlm``, ``clip``,
  ``quality+clip``): its judge task is submitted and the attempt waits for it;
* :func:`cancel` — a :class:`generations.plan.GenerationCancelRequested` arrived: every
  prediction not yet ended is CANCELLED at once (an AGENTIC shot is done), and each task still in
  flight gets a :class:`CancelTask` (the workers stop it cooperatively). Final states arriving
  for those tasks later change nothing: the record no longer changes once it is not RUNNING.

Every function is idempotent: an input already applied (at-least-once delivery replays them)
returns the record unchanged (the same object) and no effects. A record that changed has
``version`` + 1 and ``updated_at = now``. One exception, on purpose: a repeated COMPLETED of an
AGENTIC attempt that is still waiting for its score (or of its judge) returns the same record but
re-emits :class:`Evaluate` (:class:`ParseJudgement`). The orchestrator writes the record only after
it has carried out the effects, so a crash in between loses the evaluation, and the replayed
final state is what asks for it again. ``start`` is deterministic; that the generation already
has a record is the caller's check.

Generation status (:class:`GenerationStatus`): RUNNING from the start; when every prediction is
terminal: COMPLETED if at least one prediction COMPLETED, CANCELLED if every prediction was
cancelled (or the generation was, and none COMPLETED: see :func:`cancel`), else FAILED.
``completed_at`` is set then, and the record no longer changes.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from pydantic import BaseModel

from generations.agentic import (
    _KNOBS,
    ActionKind,
    Completed,
    Failed,
    OrchestratedShot,
    ShotAction,
    ShotAttempt,
    ShotSettings,
    on_attempt_finished,
)
from generations.evaluation import Evaluation, EvaluationContext
from generations.plan import (
    GenerationCancelRequested,
    GenerationPlan,
    GenerationRequested,
    PendingTask,
    PlannedTask,
    PromptStep,
    continue_after_edit,
    continue_after_prompt,
)
from generations.record import GenerationRecord, GenerationStatus, PredictionRecord
from schemas.enums import ErrorCode, GenerationType, TaskStatus, TaskType
from schemas.events import Envelope, EvaluationRecorded, Orchestration
from schemas.task_params import GenerationParams, LlmInteractionParams, TaskParams
from state.lifecycle import TaskState

# Fixed namespace of the ids derived here (judge tasks, evaluation events); changing it would make
# a replay submit a second judge and write a second evaluation event.
_NS = uuid.UUID("33fcb214-5a3f-41fd-9756-802d5c163c21")
EVALUATION_SOURCE = "/compute/processors/orchestrator"
# A COMPLETED attempt with no image cannot be judged: it scores 0 so the loop retries or gives it
# the lowest rank, and the evaluation says who scored it.
NO_IMAGE_REASON, NO_IMAGE_EVALUATOR = "the result has no image", "orchestrator"
JUDGE_EVALUATOR = "vlm"

_S = TaskStatus


# --------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class SubmitTask:
    """Produce this task (``TaskProducer.submit`` with its id and orchestration)."""

    task: PlannedTask


@dataclass(frozen=True)
class Evaluate:
    """Score attempt ``task_id``'s image with the evaluator ``provider`` names, then call
    :func:`on_evaluation` (an in-process evaluator) or :func:`start_judging` (a task evaluator)."""

    task_id: str
    image_url: str
    provider: str
    context: EvaluationContext


@dataclass(frozen=True)
class ParseJudgement:
    """The judge of attempt ``task_id`` answered ``text``: parse it with the ``provider``'s
    evaluator and call :func:`on_evaluation`. ``image_url`` is the attempt's image, for an
    evaluator that also scores it in-process (a combined evaluator, or the weight-free fallback
    when the answer has no score; None only if the attempt's stored result names no image)."""

    task_id: str
    text: str
    provider: str
    context: EvaluationContext
    image_url: str | None


@dataclass(frozen=True)
class EmitEvaluation:
    """Produce this event to the evaluations topic (keyed by its task id)."""

    event: EvaluationRecorded


@dataclass(frozen=True)
class CancelTask:
    """Ask the workers to stop task ``task_id`` (a CancelRequested on the control topic, event id
    :func:`cancel_event_id`)."""

    task_id: str
    task_type: TaskType
    reason: str | None = None
    requested_by: str | None = None


Effect = SubmitTask | Evaluate | ParseJudgement | EmitEvaluation | CancelTask
Step = tuple[GenerationRecord, list[Effect]]


# --------------------------------------------------------------------------- the functions


def start(request: GenerationRequested, *, now: datetime) -> Step:
    plan = request.plan
    common: dict[str, Any] = dict(generation_id=plan.generation_id, plan=plan, created_at=now, updated_at=now,
                  origin_instance=request.origin_instance, origin_zone=request.origin_zone,
                  origin_tenant_id=request.origin_tenant_id, webhook_url=request.webhook_url)
    if plan.prompt_step is not None:  # the GENERATION tasks wait for their prompt
        waiting = tuple(PredictionRecord(index=i, task_id=t.task_id) for i, t in enumerate(plan.prompt_step.waiting))
        record = GenerationRecord(**common, predictions=waiting, prompt_task_id=plan.prompt_step.task.task_id)
        return record, [SubmitTask(plan.prompt_step.task)]
    predictions = tuple(_submitted(PredictionRecord(index=i), t) for i, t in enumerate(plan.tasks))
    return GenerationRecord(**common, predictions=predictions, prompt=plan.prompt), [SubmitTask(t) for t in plan.tasks]


def on_task_final(record: GenerationRecord, state: TaskState, *, now: datetime) -> Step:
    if record.status is not GenerationStatus.RUNNING or not state.status.is_terminal:
        return record, []
    task_id = state.task_id
    if task_id == record.prompt_task_id:
        return _on_prompt(record, state, now)
    if task_id in record.judges:
        return _on_judge(record, state, now)
    for p in record.predictions:
        if task_id == p.follow_up_task_id:
            return _on_follow_up(record, p, state, now)
        if task_id in p.task_ids:
            return _on_attempt(record, p, state, now)
    return record, []


def on_evaluation(record: GenerationRecord, task_id: str, evaluation: Evaluation, *, now: datetime) -> Step:
    found = _open_attempt(record, task_id)
    if found is None:
        return record, []
    p, shot, attempt = found
    p, effects = _evaluated(record, p, shot, attempt, evaluation, now)
    return _commit(record, now, p), effects


def judge_task_id(attempt_task_id: str) -> str:
    """The judge task of an attempt (deterministic: a replayed Evaluate finds the same judge)."""
    return str(uuid.uuid5(_NS, f"{attempt_task_id}/judge"))


def start_judging(record: GenerationRecord, task_id: str, params: LlmInteractionParams, *,
                  now: datetime) -> Step:
    judge_id = judge_task_id(task_id)
    found = _open_attempt(record, task_id)
    if found is None or judge_id in record.judges:
        return record, []
    # No shot_id: the judge is no attempt of the shot, only the generation's (so its final state
    # is routed back here).
    orchestration = _orchestration(record.plan, found[0].index).model_copy(update={"shot_id": None})
    judge = PlannedTask(task_id=judge_id, task_type=TaskType.LLM_INTERACTION, params=params,
                        orchestration=orchestration)
    return _commit(record, now, judges={**record.judges, judge_id: task_id}), [SubmitTask(judge)]


def cancel_event_id(task_id: str) -> str:
    """The CancelRequested event id of a task the orchestrator cancels (deterministic: a replayed
    cancel writes the same event)."""
    return str(uuid.uuid5(_NS, f"{task_id}/cancel"))


def cancel(record: GenerationRecord, request: GenerationCancelRequested, *, now: datetime) -> Step:
    """Cancel the generation: every prediction not yet terminal becomes CANCELLED (its shot done,
    its open attempts CANCELLED); the generation ends COMPLETED if a prediction had completed, else
    CANCELLED. Effects: a :class:`CancelTask` per task still in flight (a prediction's running
    attempt or task, its follow-up, an attempt's judge, the prompt task). A finished generation
    (or a second cancel) is unchanged, with no effects."""
    if record.status is not GenerationStatus.RUNNING:
        return record, []
    who = f" by {request.requested_by}" if request.requested_by else ""
    why = f": {request.reason}" if request.reason else ""
    note = f"the generation was cancelled{who}{why}"
    in_flight: list[tuple[str, TaskType]] = []
    predictions = []
    for p in record.predictions:
        if p.status.is_terminal:
            predictions.append(p)
            continue
        in_flight += _in_flight(record, p)
        changes: dict[str, Any] = dict(status=_S.CANCELLED, error_code=None, error_message=note)
        if p.shot is not None:
            shot = OrchestratedShot.from_dict(p.shot)
            attempts = tuple(dataclasses.replace(a, status=_S.CANCELLED) if a.status is _S.PENDING else a
                             for a in shot.attempts)
            changes["shot"] = dataclasses.replace(shot, attempts=attempts, done=True).to_dict()
        predictions.append(_with(p, **changes))
    if any(p.status is _S.PENDING for p in record.predictions) and record.prompt_task_id is not None:
        in_flight.insert(0, (record.prompt_task_id, TaskType.LLM_INTERACTION))
    message = f"{record.message}; {note}" if record.message else note
    new = _commit(record, now, predictions=tuple(predictions), cancel_requested_at=now, message=message)
    effects: list[Effect] = [CancelTask(task_id, task_type, request.reason, request.requested_by)
                             for task_id, task_type in dict.fromkeys(in_flight)]
    return new, effects


def _in_flight(record: GenerationRecord, p: PredictionRecord) -> list[tuple[str, TaskType]]:
    """The tasks of a prediction that is not terminal which may still be running."""
    if p.status is _S.PENDING:  # waits for the prompt task (the caller cancels that one)
        return []
    if p.follow_up_task_id is not None:  # the accepted result's follow-up runs
        follow_up = next((f for f in record.plan.follow_ups if f.task_id == p.follow_up_task_id), None)
        return [(p.follow_up_task_id, follow_up.task_type if follow_up else TaskType.DETAIL_ENHANCER)]
    if p.shot is None:  # BASE: its one task
        return [(p.task_id, _planned(record.plan, p.index).task_type)] if p.task_id else []
    shot = OrchestratedShot.from_dict(p.shot)
    found: list[tuple[str, TaskType]] = []
    for a in shot.attempts:
        if a.status is not _S.PENDING:
            continue
        if a.task_id not in p.results:  # not yet COMPLETED: the attempt itself runs
            found.append((a.task_id, a.params.task_type))
        found += [(judge, TaskType.LLM_INTERACTION) for judge, judged in record.judges.items()
                  if judged == a.task_id]
    return found


# --------------------------------------------------------------------------- by task role


def _on_prompt(record: GenerationRecord, state: TaskState, now: datetime) -> Step:
    if any(p.status is not _S.PENDING for p in record.predictions):
        return record, []  # already continued
    if state.status is _S.CANCELLED:
        cancelled = tuple(_with(p, status=_S.CANCELLED, error_message="the prompt task was cancelled")
                          for p in record.predictions)
        return _commit(record, now, predictions=cancelled), []
    completed = state.status is _S.COMPLETED
    # A failed prompt step is no reason to fail the generation: the template prompt still works.
    tasks = continue_after_prompt(record.plan, _result(state).get("result_text") if completed else None)
    prompt = cast(GenerationParams, tasks[0].params).prompt
    message = None
    if not completed:
        message = (f"the prompt task failed ({_code(state)}: {state.error_message or 'no message'}); "
                   f"the template prompt was used")
    elif prompt == cast(PromptStep, record.plan.prompt_step).fallback_prompt:
        message = "the prompt task gave no usable prompt; the template prompt was used"
    predictions = tuple(_submitted(p, t) for p, t in zip(record.predictions, tasks))
    return (_commit(record, now, predictions=predictions, prompt=prompt, message=message),
            [SubmitTask(t) for t in tasks])


def _on_judge(record: GenerationRecord, state: TaskState, now: datetime) -> Step:
    found = _open_attempt(record, record.judges[state.task_id])
    if found is None:
        return record, []
    p, shot, attempt = found
    if state.status is _S.COMPLETED:  # repeated while the attempt waits: see the module doc
        text = _result(state).get("result_text") or ""
        return record, [ParseJudgement(attempt.task_id, text, shot.settings.evaluation_provider,
                                       _context(record, shot, attempt),
                                       _image_url(p.results.get(attempt.task_id) or {}))]
    failed = Evaluation(0.0, (f"evaluation failed: {_code(state)}",), evaluator=JUDGE_EVALUATOR)
    return on_evaluation(record, attempt.task_id, failed, now=now)


def _on_follow_up(record: GenerationRecord, p: PredictionRecord, state: TaskState, now: datetime) -> Step:
    if p.status.is_terminal:
        return record, []
    if state.status is _S.COMPLETED:
        result = _result(state)
        p = _with(p, status=_S.COMPLETED, task_id=state.task_id, result=result,
                  results={**p.results, state.task_id: result})
    else:  # the accepted result it worked on stays in ``result`` and ``results``
        p = _with(p, status=state.status, error_code=_code(state) if state.status is _S.FAILED else None,
                  error_message=state.error_message)
    return _commit(record, now, p), []


def _on_attempt(record: GenerationRecord, p: PredictionRecord, state: TaskState, now: datetime) -> Step:
    if p.status.is_terminal:
        return record, []
    task_id, status = state.task_id, state.status
    if p.shot is None:  # BASE: the task's outcome is the prediction's
        if p.follow_up_task_id is not None:
            return record, []  # already accepted
        if status is _S.COMPLETED:
            result = _result(state)
            p, effects = _accept(record.plan, _with(p, results={**p.results, task_id: result}), task_id)
            return _commit(record, now, p), effects
        return _commit(record, now, _ended(p, state)), []
    shot = OrchestratedShot.from_dict(p.shot)
    attempt = next(a for a in shot.attempts if a.task_id == task_id)
    if shot.done or attempt.status is not _S.PENDING:
        return record, []
    if status is _S.COMPLETED:
        result = _result(state)
        waiting = _with(p, results={**p.results, task_id: result}) if task_id not in p.results else p
        url = _image_url(result)
        if url is None:
            no_image = Evaluation(0.0, (NO_IMAGE_REASON,), evaluator=NO_IMAGE_EVALUATOR)
            done, effects = _evaluated(record, waiting, shot, attempt, no_image, now)
            return _commit(record, now, done), effects
        return _commit(record, now, waiting), [Evaluate(task_id, url, shot.settings.evaluation_provider,
                                                        _context(record, shot, attempt))]
    if status is _S.CANCELLED:  # a cancel ends the prediction: no retry, the shot is done
        attempts = tuple(dataclasses.replace(a, status=_S.CANCELLED) if a.task_id == task_id else a
                         for a in shot.attempts)
        shot = dataclasses.replace(shot, attempts=attempts, done=True)
        return _commit(record, now, _ended(_with(p, shot=shot.to_dict()), state)), []
    code = state.error_code or ErrorCode.PROVIDER_ERROR
    shot, action = on_attempt_finished(shot, task_id, Failed(code, state.error_message or ""))
    assert action is not None  # the shot was not done: the attempt was its open one
    p, effects = _act(record.plan, p, shot, action, last_error=state.error_message)
    return _commit(record, now, p), effects


# --------------------------------------------------------------------------- the AGENTIC decision


def _evaluated(record: GenerationRecord, p: PredictionRecord, shot: OrchestratedShot, attempt: ShotAttempt,
               evaluation: Evaluation, now: datetime) -> tuple[PredictionRecord, list[Effect]]:
    """Decide on a scored attempt: the evaluation event, then the action's effects."""
    shot, action = on_attempt_finished(shot, attempt.task_id, Completed(evaluation.score, evaluation.reasons))
    assert action is not None  # the shot was not done: the attempt was its open one
    accepted = action.task_id if action.kind in (ActionKind.ACCEPT, ActionKind.ACCEPT_BEST) else None
    envelope = Envelope(
        # uuid5: a replayed decision writes the same event, which consumers can drop as a duplicate.
        event_id=str(uuid.uuid5(_NS, f"{attempt.task_id}/evaluation")), task_id=attempt.task_id,
        task_type=attempt.params.task_type, attempt=1, occurred_at=now, source=EVALUATION_SOURCE,
        origin_instance=record.origin_instance, origin_zone=record.origin_zone,
        origin_tenant_id=record.origin_tenant_id)
    event = EvaluationRecorded(
        envelope=envelope, generation_id=record.generation_id, shot_id=shot.shot_id,
        evaluated_attempt=attempt.attempt, score=evaluation.score, reasons=list(evaluation.reasons),
        evaluator=evaluation.evaluator or shot.settings.evaluation_provider,
        decision=action.kind.evaluation_decision, accepted_task_id=accepted)
    p, effects = _act(record.plan, p, shot, action, last_error=None)
    return p, [EmitEvaluation(event), *effects]


def _act(plan: GenerationPlan, p: PredictionRecord, shot: OrchestratedShot, action: ShotAction, *,
         last_error: str | None) -> tuple[PredictionRecord, list[Effect]]:
    """Carry out the shot's action on the prediction (scored or FAILED attempts alike)."""
    p = _with(p, shot=shot.to_dict())
    if action.kind is ActionKind.RETRY:
        params = cast(TaskParams, action.params)  # a RETRY carries its task's id and parameters
        retry = PlannedTask(task_id=cast(str, action.task_id), task_type=params.task_type, params=params,
                            orchestration=_orchestration(plan, p.index))
        return _with(p, task_id=retry.task_id, task_ids=(*p.task_ids, retry.task_id)), [SubmitTask(retry)]
    if action.kind is ActionKind.GIVE_UP:  # only a FAILED attempt can end a shot with no result
        last = shot.attempts[-1]
        code = last.error_code.value if last.error_code else None
        return _with(p, status=_S.FAILED, error_code=code,
                     error_message=f"every attempt failed ({len(shot.attempts)} of {shot.settings.max_attempts}); "
                                   f"the last: {code}: {last_error or 'no message'}"), []
    return _accept(plan, p, cast(str, action.task_id))  # ACCEPT / ACCEPT_BEST name the task


def _accept(plan: GenerationPlan, p: PredictionRecord, task_id: str) -> tuple[PredictionRecord, list[Effect]]:
    """``task_id``'s result is the prediction's, unless the plan has a follow-up to run on it."""
    result = p.results.get(task_id)
    p = _with(p, task_id=task_id, result=result)
    url = _image_url(result or {})
    follow_up = continue_after_edit(plan, p.index, url) if url else None
    if follow_up is None:
        return _with(p, status=_S.COMPLETED), []
    return (_with(p, follow_up_task_id=follow_up.task_id, task_ids=(*p.task_ids, follow_up.task_id)),
            [SubmitTask(follow_up)])


# --------------------------------------------------------------------------- helpers


def _submitted(p: PredictionRecord, task: PlannedTask) -> PredictionRecord:
    """The prediction once its first task is submitted (AGENTIC: its shot starts here)."""
    o = task.orchestration
    shot = None
    if o is not None and o.generation_type is GenerationType.AGENTIC:
        shot = OrchestratedShot.start(generation_id=o.generation_id, prediction_index=p.index, params=task.params,
                                      settings=ShotSettings.of(o), shot_id=o.shot_id,
                                      task_id=task.task_id).to_dict()
    return _with(p, status=_S.PROCESSING, task_id=task.task_id, task_ids=(task.task_id,), shot=shot)


def _open_attempt(record: GenerationRecord, task_id: str
                  ) -> tuple[PredictionRecord, OrchestratedShot, ShotAttempt] | None:
    """The prediction, shot and attempt of ``task_id`` if that attempt still waits for its outcome."""
    if record.status is not GenerationStatus.RUNNING:
        return None
    for p in record.predictions:
        if p.shot is None or task_id not in p.task_ids or p.status.is_terminal:
            continue
        shot = OrchestratedShot.from_dict(p.shot)
        attempt = next((a for a in shot.attempts if a.task_id == task_id), None)
        if attempt is not None and not shot.done and attempt.status is _S.PENDING:
            return p, shot, attempt
    return None


def _planned(plan: GenerationPlan, index: int) -> PlannedTask | PendingTask:
    """Prediction ``index``'s first task (the plan's task, or its task waiting for a prompt)."""
    tasks: tuple[PlannedTask | PendingTask, ...] = plan.tasks or (plan.prompt_step.waiting if plan.prompt_step else ())
    return tasks[index]


def _orchestration(plan: GenerationPlan, index: int) -> Orchestration:
    """Prediction ``index``'s orchestration."""
    return cast(Orchestration, _planned(plan, index).orchestration)  # every planned task has one


def _context(record: GenerationRecord, shot: OrchestratedShot, attempt: ShotAttempt) -> EvaluationContext:
    task_type = attempt.params.task_type
    return EvaluationContext(task_type=task_type, prompt=_prompt_of(attempt.params),
                             generation_id=record.generation_id, shot_id=shot.shot_id, attempt=attempt.attempt,
                             expects_alpha=task_type is TaskType.BACKGROUND_REMOVE,
                             width=getattr(attempt.params, "width", None),
                             height=getattr(attempt.params, "height", None))


def _prompt_of(params: TaskParams) -> str | None:
    # The field holding the prompt differs per task type; agentic's table is the one place it is kept.
    field = _KNOBS[params.task_type].prompt
    return getattr(params, field, None) if field else None


def _result(state: TaskState) -> dict[str, Any]:
    """The TaskResult JSON of a final state (the fold keeps whatever the event carried)."""
    result = state.result
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return dict(result) if isinstance(result, dict) else {}


def _image_url(result: dict[str, Any]) -> str | None:
    return result.get("result_image_url") or next(iter(result.get("output_urls") or ()), None)


def _code(state: TaskState) -> str:
    """The error code a FAILED state names (CANCELLED for a cancel)."""
    if state.status is _S.FAILED:
        return str((state.error_code or ErrorCode.PROVIDER_ERROR).value)
    return str(state.status.value)


def _ended(p: PredictionRecord, state: TaskState) -> PredictionRecord:
    """The prediction ended as its task did (FAILED or CANCELLED)."""
    return _with(p, status=state.status, error_code=_code(state) if state.status is _S.FAILED else None,
                 error_message=state.error_message)


def _with(p: PredictionRecord, **changes: Any) -> PredictionRecord:
    return p.model_copy(update=changes)


def _commit(record: GenerationRecord, now: datetime, prediction: PredictionRecord | None = None,
            **changes: Any) -> GenerationRecord:
    """The record with ``changes`` (and ``prediction`` in its place): the same object when
    nothing changed, else version + 1, ``updated_at = now`` and the generation status."""
    if prediction is not None:
        changes["predictions"] = tuple(prediction if q.index == prediction.index else q for q in record.predictions)
    new = record.model_copy(update=changes)
    if new == record:
        return record
    status = _status(new.predictions)
    if status is GenerationStatus.FAILED and new.cancel_requested_at is not None:
        status = GenerationStatus.CANCELLED  # cancelled with nothing completed
    return new.model_copy(update=dict(status=status, version=record.version + 1, updated_at=now,
                                      completed_at=None if status is GenerationStatus.RUNNING else now))


def _status(predictions: tuple[PredictionRecord, ...]) -> GenerationStatus:
    statuses = {p.status for p in predictions}
    if not all(s.is_terminal for s in statuses):
        return GenerationStatus.RUNNING
    if _S.COMPLETED in statuses:
        return GenerationStatus.COMPLETED
    return GenerationStatus.CANCELLED if statuses == {_S.CANCELLED} else GenerationStatus.FAILED
