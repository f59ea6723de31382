"""A workflow's state and the pure functions that move it. No Kafka, no clock: ``now`` is passed.

The state is :class:`~schemas.workflow_events.WorkflowState` (the Avro record of the compacted
``<prefix>.workflows.state`` topic). Each function returns ``(state, effects)``; an unchanged
state (same ``version``) means the input changed nothing (a repeat, or a command that does not
apply), and the engine writes nothing. Effects are :class:`SubmitStep` (produce the step's task)
and :class:`CancelStep` (ask the workers to stop it).

    CREATED --start--> RUNNING --pause--> PAUSED --resume--> RUNNING --> COMPLETED | FAILED | CANCELLED

* A step starts when every step in its ``depends_on`` COMPLETED and the workflow is RUNNING; its
  parameters are its ``config`` plus, per input mapping, the field of the parent's result
  (:func:`step_params`). Its task id is :func:`step_task_id` (deterministic, so a replayed
  decision resubmits the same task).
* The workflow COMPLETES when every step COMPLETED (also while PAUSED: nothing is left to hold).
* A step whose task ends FAILED fails the workflow (``failed_step``); one whose task ends
  CANCELLED (cancelled by itself, through the tasks API) cancels it. Either way no step starts
  again: the steps not started become SKIPPED and the running ones get a :class:`CancelStep`.
  A step whose parameters cannot be made (a parent's result lacks the mapped field, or the value
  breaks the parameter's rule) FAILS with INVALID_INPUT, and so does the workflow.
* PAUSE: the running steps finish, nothing new starts. RESUME starts what became ready.
  CANCEL (from CREATED, RUNNING or PAUSED) ends it CANCELLED as above.
* A terminal status is never left: exactly one terminal state per workflow. A running step's
  final state that arrives after the end is still recorded on the step (its result, for cleanup).
* A final state of a task that is not the step's current task, or of a step already ended, is
  ignored: delivery is at least once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import JsonValue, ValidationError

from schemas.enums import ErrorCode, GenerationStrategy, GenerationType, TaskStatus, TaskType
from schemas.events import Orchestration, TaskResult
from schemas.task_params import PARAMS_MODELS
from schemas.workflow_events import (
    WorkflowCommand,
    WorkflowCommandRequested,
    WorkflowRequested,
    WorkflowState,
    WorkflowStatus,
    WorkflowStepState,
    WorkflowStepStatus,
    is_workflow_id,
)
from state.lifecycle import TaskState
from workflows.spec import WorkflowValidationError, validate_workflow

_S = WorkflowStatus
_P = WorkflowStepStatus
_NS = uuid.UUID("6f1d7c52-3b9e-4f0a-9d55-0c2b8e4a7a11")  # namespace of the steps' task ids

# Orchestration.strategy is required; a step gets the strategy whose task type it runs, and
# GENERATE for the types no strategy produces. Readers tell a step by ``workflow_id``.
_STRATEGY: dict[TaskType, GenerationStrategy] = {
    TaskType.EDITING: GenerationStrategy.EDITING,
    TaskType.REFINE: GenerationStrategy.REFINE,
    TaskType.VIDEO_GENERATION: GenerationStrategy.VIDEO,
    TaskType.BACKGROUND_FIX: GenerationStrategy.BACKGROUND_FIXING,
    TaskType.IMAGE_ADJUSTER: GenerationStrategy.IMAGE_ADJUSTING,
    TaskType.FACE_ENHANCER: GenerationStrategy.FACE_FIXING,
}


@dataclass(frozen=True)
class SubmitStep:
    """Produce the step's task: ``params`` as task ``task_id`` with ``orchestration``."""

    step_id: str
    task_id: str
    task_type: TaskType
    params: dict[str, Any]
    orchestration: Orchestration


@dataclass(frozen=True)
class CancelStep:
    """Ask the workers to stop the step's running task (a CancelRequested on the control topic)."""

    step_id: str
    task_id: str
    task_type: TaskType
    reason: str


Effect = SubmitStep | CancelStep
Outcome = tuple[WorkflowState, list[Effect]]


class StepInputError(ValueError):
    """A step's parameters cannot be made from its parents' results (see the message)."""


def step_task_id(workflow_id: str, step_id: str) -> str:
    """The task id of a step: one per (workflow, step), the same on every replay."""
    return str(uuid.uuid5(_NS, f"{workflow_id}/{step_id}"))


# --------------------------------------------------------------------------- helpers


def _bump(state: WorkflowState, now: datetime, **changes: Any) -> WorkflowState:
    return state.model_copy(update={**changes, "version": state.version + 1, "updated_at": now})


def _with_step(state: WorkflowState, step: WorkflowStepState) -> WorkflowState:
    """``state`` with ``step`` replacing the step of the same id (no version change)."""
    steps = [step if s.step_id == step.step_id else s for s in state.steps]
    return state.model_copy(update={"steps": steps})


def _spec_step(state: WorkflowState, step_id: str) -> Any:
    return next(s for s in state.spec.steps if s.id == step_id)


def ready_steps(state: WorkflowState) -> list[str]:
    """The PENDING steps whose dependencies all COMPLETED, in the spec's order; none unless the
    workflow is RUNNING."""
    if state.status is not _S.RUNNING:
        return []
    done = {s.step_id for s in state.steps if s.status is _P.COMPLETED}
    pending = {s.step_id for s in state.steps if s.status is _P.PENDING}
    return [s.id for s in state.spec.steps if s.id in pending and set(s.depends_on) <= done]


def step_params(state: WorkflowState, step_id: str) -> dict[str, Any]:
    """The step's task parameters: its config plus each mapped field of its parents' results,
    checked against the task type's parameters. Raises :class:`StepInputError`."""
    spec = _spec_step(state, step_id)
    params: dict[str, JsonValue] = dict(spec.config or {})
    for mapping in spec.input_mappings:
        parent = state.step(mapping.from_step)
        value = None if parent.result is None else getattr(parent.result, mapping.from_field, None)
        if value is None or value == []:
            raise StepInputError(f"step {mapping.from_step!r}'s result has no {mapping.from_field} "
                                 f"for {mapping.to_field}")
        params[mapping.to_field] = value
    try:
        PARAMS_MODELS[spec.task_type].model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "(params)"
        raise StepInputError(f"{path}: {first['msg']}") from None
    return params


def _orchestration(state: WorkflowState, step_id: str, index: int, task_type: TaskType) -> Orchestration:
    return Orchestration(generation_id=state.workflow_id, prediction_index=index,
                         generation_type=GenerationType.BASE,
                         strategy=_STRATEGY.get(task_type, GenerationStrategy.GENERATE),
                         workflow_id=state.workflow_id, step_id=step_id,
                         suppress_events=state.spec.suppress_subtask_events)


def _start_ready(state: WorkflowState, now: datetime) -> Outcome:
    """Submit every ready step (no version change by itself); a step whose parameters cannot be
    made fails the workflow."""
    effects: list[Effect] = []
    for step_id in ready_steps(state):
        index = next(i for i, s in enumerate(state.spec.steps) if s.id == step_id)
        step = state.step(step_id)
        try:
            params = step_params(state, step_id)
        except StepInputError as exc:
            failed = step.model_copy(update={"status": _P.FAILED, "error_code": ErrorCode.INVALID_INPUT,
                                             "error_message": str(exc), "completed_at": now})
            state, more = _end(_with_step(state, failed), _S.FAILED, now,
                               f"step {step_id!r} cannot start: {exc}", failed_step=step_id)
            return state, [*effects, *more]
        task_id = step_task_id(state.workflow_id, step_id)
        state = _with_step(state, step.model_copy(update={
            "status": _P.RUNNING, "task_id": task_id, "params": params, "started_at": now}))
        effects.append(SubmitStep(step_id, task_id, step.task_type, params,
                                  _orchestration(state, step_id, index, step.task_type)))
    return state, effects


def _end(state: WorkflowState, status: WorkflowStatus, now: datetime, message: str | None,
         failed_step: str | None = None) -> Outcome:
    """``state`` ended with ``status``: PENDING steps SKIPPED, RUNNING ones asked to stop (their
    final states still come, and are recorded). No version change by itself."""
    effects: list[Effect] = []
    steps = []
    for step in state.steps:
        if step.status is _P.PENDING:
            step = step.model_copy(update={"status": _P.SKIPPED, "completed_at": now,
                                           "error_message": f"not started: the workflow is {status.value}"})
        elif step.status is _P.RUNNING and step.task_id is not None:
            effects.append(CancelStep(step.step_id, step.task_id, step.task_type,
                                      f"workflow {state.workflow_id} is {status.value}"))
        steps.append(step)
    return state.model_copy(update={"status": status, "steps": steps, "completed_at": now,
                                    "message": message, "failed_step": failed_step}), effects


# --------------------------------------------------------------------------- entry points


def create(request: WorkflowRequested, now: datetime) -> Outcome:
    """The first state of a requested workflow: CREATED, or RUNNING with its first steps when
    ``request.start``. A spec that fails :func:`validate_workflow` (the API checks it first,
    so only a faulty writer sends one) gives a FAILED workflow whose message says why."""
    steps = [WorkflowStepState(step_id=s.id, task_type=s.task_type, status=_P.PENDING)
             for s in request.spec.steps]
    state = WorkflowState(workflow_id=request.workflow_id, spec=request.spec, status=_S.CREATED,
                          steps=steps, version=1, created_at=request.occurred_at, updated_at=now,
                          origin_zone=request.origin_zone, origin_tenant_id=request.origin_tenant_id,
                          webhook_url=request.webhook_url)
    problem = None
    if not is_workflow_id(request.workflow_id):
        problem = "the workflow id is not a workflow id (a version-8 UUID: new_workflow_id())"
    else:
        try:
            validate_workflow(request.spec)
        except WorkflowValidationError as exc:
            problem = str(exc)
    if problem is not None:
        state, _ = _end(state, _S.FAILED, now, problem)
        return state, []
    if request.start:
        return _start(state, now)
    return state, []


def _start(state: WorkflowState, now: datetime) -> Outcome:
    state = state.model_copy(update={"status": _S.RUNNING, "started_at": state.started_at or now})
    return _start_ready(state, now)


def apply_command(state: WorkflowState, command: WorkflowCommandRequested, now: datetime) -> Outcome:
    """START (from CREATED), PAUSE (from RUNNING), RESUME (from PAUSED), CANCEL (from any status
    but a terminal one); any other pair changes nothing."""
    status, kind = state.status, command.command
    if kind is WorkflowCommand.START and status is _S.CREATED:
        new, effects = _start(state, now)
    elif kind is WorkflowCommand.PAUSE and status is _S.RUNNING:
        new, effects = state.model_copy(update={"status": _S.PAUSED}), []
    elif kind is WorkflowCommand.RESUME and status is _S.PAUSED:
        new, effects = _start_ready(state.model_copy(update={"status": _S.RUNNING}), now)
    elif kind is WorkflowCommand.CANCEL and not status.is_terminal:
        reason = command.reason or "cancelled"
        by = f" by {command.requested_by}" if command.requested_by else ""
        new, effects = _end(state, _S.CANCELLED, now, f"{reason}{by}")
    else:
        return state, []
    return _bump(new, now), effects


def on_task_final(state: WorkflowState, task: TaskState, now: datetime) -> Outcome:
    """A step's task reached its final state (COMPLETED, FAILED after its retries, CANCELLED)."""
    step = next((s for s in state.steps if s.task_id == task.task_id), None)
    if step is None or step.status is not _P.RUNNING or not task.status.is_terminal:
        return state, []
    if task.status is TaskStatus.COMPLETED:
        ended = step.model_copy(update={"status": _P.COMPLETED, "attempt": task.attempt,
                                        "result": _result(task.result), "completed_at": now})
    else:
        ended = step.model_copy(update={
            "status": _P.FAILED if task.status is TaskStatus.FAILED else _P.CANCELLED,
            "attempt": task.attempt, "error_code": task.error_code,
            "error_message": task.error_message or task.message, "completed_at": now})
    state = _with_step(state, ended)
    effects: list[Effect] = []
    if state.status.is_terminal:
        pass  # recorded on the step; the workflow's end stands
    elif ended.status is _P.FAILED:
        code = f" ({task.error_code.value})" if task.error_code else ""
        why = f": {ended.error_message}" if ended.error_message else ""
        state, effects = _end(state, _S.FAILED, now, f"step {step.step_id!r} failed{code}{why}",
                              failed_step=step.step_id)
    elif ended.status is _P.CANCELLED:
        state, effects = _end(state, _S.CANCELLED, now, f"step {step.step_id!r}'s task was cancelled")
    elif all(s.status is _P.COMPLETED for s in state.steps):
        state = state.model_copy(update={"status": _S.COMPLETED, "completed_at": now})
    else:
        state, effects = _start_ready(state, now)
    return _bump(state, now), effects


def _result(result: object) -> TaskResult | None:
    """The TaskResult of a task state's result (its JSON form in the state document)."""
    if result is None or isinstance(result, TaskResult):
        return result
    try:
        return TaskResult.model_validate(result)
    except ValidationError:
        return None
