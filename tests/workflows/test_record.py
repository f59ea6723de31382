"""The workflow state machine (workflows/record.py), driven by hand: which steps start, with what
parameters, and how failures, pauses and cancels end a workflow (exactly once)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.enums import ErrorCode, TaskStatus, TaskType
from schemas.workflow_events import (
    WorkflowCommand,
    WorkflowCommandRequested,
    WorkflowRequested,
    WorkflowSpec,
    WorkflowState,
    WorkflowStatus,
    WorkflowStepStatus,
    new_workflow_id,
)
from state.lifecycle import TaskState
from workflows import record
from workflows.record import CancelStep, SubmitStep

T0 = datetime(2026, 1, 1, tzinfo=UTC)
W, P = WorkflowStatus, WorkflowStepStatus


def image_mapping(parent: str, to_field: str = "base_image_url") -> dict[str, str]:
    return {"from_step": parent, "from_field": "result_image_url", "to_field": to_field}


FASHION = [
    {"id": "gen", "task_type": "GENERATION", "config": {"prompt": "a red dress", "seed": 7}},
    {"id": "refine", "task_type": "REFINE", "depends_on": ["gen"], "input_mappings": [image_mapping("gen")]},
    {"id": "cutout", "task_type": "BACKGROUND_REMOVE", "depends_on": ["refine"],
     "input_mappings": [image_mapping("refine", "image_url")]},
    {"id": "adjust", "task_type": "IMAGE_ADJUSTER", "depends_on": ["cutout"], "config": {"brightness": 0.2},
     "input_mappings": [image_mapping("cutout")]},
]
DIAMOND = [
    {"id": "gen", "task_type": "GENERATION", "config": {"prompt": "a hat"}},
    {"id": "left", "task_type": "REFINE", "depends_on": ["gen"], "input_mappings": [image_mapping("gen")]},
    {"id": "right", "task_type": "FACE_ENHANCER", "depends_on": ["gen"], "input_mappings": [image_mapping("gen")]},
    {"id": "join", "task_type": "EDITING", "depends_on": ["left", "right"], "config": {"prompt": "merge"},
     "input_mappings": [image_mapping("left"), image_mapping("right", "mask_url")]},
]


def request(steps: list[dict[str, Any]], *, start: bool = True, suppress: bool = False,
            workflow_id: str | None = None) -> WorkflowRequested:
    spec = WorkflowSpec.model_validate({"name": "w", "origin_instance": "tests", "steps": steps,
                                        "suppress_subtask_events": suppress})
    return WorkflowRequested(event_id=str(uuid.uuid4()), workflow_id=workflow_id or new_workflow_id(),
                             occurred_at=T0, source="tests", spec=spec, start=start)


def command(state: WorkflowState, kind: WorkflowCommand, **extra: Any) -> WorkflowCommandRequested:
    return WorkflowCommandRequested(event_id=str(uuid.uuid4()), workflow_id=state.workflow_id,
                                    occurred_at=T0, source="tests", command=kind, **extra)


def final(task_id: str, status: TaskStatus, *, url: str | None = None, attempt: int = 1,
          code: ErrorCode | None = None) -> TaskState:
    result = None
    if status is TaskStatus.COMPLETED:
        result = {"result_image_url": url or f"s3://out/{task_id}.png", "output_urls": [],
                  "metadata": {"model": "tiny", "provider": "tests", "timing_ms": 5}}
    return TaskState(task_id=task_id, task_type=TaskType.GENERATION, status=status, attempt=attempt,
                     progress=1.0, version=4, created_at=T0, queued_at=T0, started_at=T0,
                     completed_at=T0, updated_at=T0, last_event_id=str(uuid.uuid4()), result=result,
                     error_code=code, error_message="boom" if code else None)


def submitted(effects: list[record.Effect]) -> list[str]:
    return [e.step_id for e in effects if isinstance(e, SubmitStep)]


def complete(state: WorkflowState, step_id: str, now: datetime = T0) -> tuple[WorkflowState, list[record.Effect]]:
    task_id = state.step(step_id).task_id
    assert task_id is not None
    return record.on_task_final(state, final(task_id, TaskStatus.COMPLETED, url=f"s3://out/{step_id}.png"), now)


def statuses(state: WorkflowState) -> dict[str, WorkflowStepStatus]:
    return {s.step_id: s.status for s in state.steps}


# --------------------------------------------------------------------------- runs to the end


def test_the_fashion_pipeline_runs_step_by_step_each_fed_by_its_parent():
    state, effects = record.create(request(FASHION), T0)
    assert state.status is W.RUNNING and state.version == 1 and state.started_at == T0
    assert submitted(effects) == ["gen"]
    [gen] = effects
    assert isinstance(gen, SubmitStep)
    assert gen.params == {"prompt": "a red dress", "seed": 7}
    assert gen.task_id == record.step_task_id(state.workflow_id, "gen")
    orchestration = gen.orchestration
    assert (orchestration.generation_id, orchestration.workflow_id, orchestration.step_id) == (
        state.workflow_id, state.workflow_id, "gen")
    assert orchestration.suppress_events is False
    for parent, child, field in [("gen", "refine", "base_image_url"), ("refine", "cutout", "image_url"),
                                 ("cutout", "adjust", "base_image_url")]:
        state, effects = complete(state, parent)
        [effect] = effects
        assert isinstance(effect, SubmitStep) and effect.step_id == child
        assert effect.params[field] == f"s3://out/{parent}.png"
        assert state.step(child).status is P.RUNNING and state.step(child).params == effect.params
    assert state.step("adjust").params == {"brightness": 0.2, "base_image_url": "s3://out/cutout.png"}
    version = state.version
    state, effects = complete(state, "adjust", T0 + timedelta(seconds=9))
    assert effects == [] and state.status is W.COMPLETED and state.completed_at == T0 + timedelta(seconds=9)
    assert state.version == version + 1
    assert all(s.status is P.COMPLETED and s.result is not None for s in state.steps)
    assert state.step("adjust").result.result_image_url == "s3://out/adjust.png"


def test_a_diamond_starts_both_branches_and_joins_once_both_completed():
    state, effects = record.create(request(DIAMOND), T0)
    state, effects = complete(state, "gen")
    assert submitted(effects) == ["left", "right"]
    state, effects = complete(state, "right")
    assert effects == [] and state.step("join").status is P.PENDING
    state, effects = complete(state, "left")
    [join] = effects
    assert isinstance(join, SubmitStep) and join.step_id == "join"
    assert join.params == {"prompt": "merge", "base_image_url": "s3://out/left.png", "mask_url": "s3://out/right.png"}
    state, _ = complete(state, "join")
    assert state.status is W.COMPLETED


def test_step_task_ids_are_stable_and_distinct():
    wid = new_workflow_id()
    assert record.step_task_id(wid, "a") == record.step_task_id(wid, "a")
    assert len({record.step_task_id(wid, "a"), record.step_task_id(wid, "b"),
                record.step_task_id(new_workflow_id(), "a")}) == 3


def test_suppress_subtask_events_is_on_every_step_task():
    _, [effect] = record.create(request(FASHION, suppress=True), T0)
    assert isinstance(effect, SubmitStep) and effect.orchestration.suppress_events is True


# --------------------------------------------------------------------------- created, started


def test_without_start_it_waits_created_until_a_start_command():
    state, effects = record.create(request(FASHION, start=False), T0)
    assert state.status is W.CREATED and effects == [] and state.started_at is None
    assert record.ready_steps(state) == []
    for kind in (WorkflowCommand.PAUSE, WorkflowCommand.RESUME):
        assert record.apply_command(state, command(state, kind), T0) == (state, [])
    started, effects = record.apply_command(state, command(state, WorkflowCommand.START), T0)
    assert started.status is W.RUNNING and submitted(effects) == ["gen"] and started.version == 2
    assert record.apply_command(started, command(started, WorkflowCommand.START), T0) == (started, [])


def test_an_invalid_spec_on_the_topic_is_a_failed_workflow_that_says_why():
    state, effects = record.create(request([{"id": "r", "task_type": "REFINE"}]), T0)
    assert state.status is W.FAILED and effects == []
    assert "config.base_image_url" in (state.message or "")
    assert statuses(state) == {"r": P.SKIPPED}


def test_a_workflow_id_that_is_no_workflow_id_fails_it():
    state, effects = record.create(request(FASHION, workflow_id=str(uuid.uuid4())), T0)
    assert state.status is W.FAILED and effects == [] and "version-8" in (state.message or "")


# --------------------------------------------------------------------------- failure


def test_a_failing_step_fails_the_workflow_and_starts_nothing_after_it():
    state, _ = record.create(request(FASHION), T0)
    state, _ = complete(state, "gen")
    refine_task = state.step("refine").task_id
    state, effects = record.on_task_final(state, final(refine_task, TaskStatus.FAILED, attempt=3,
                                                        code=ErrorCode.PROVIDER_ERROR), T0)
    assert effects == []
    assert state.status is W.FAILED and state.failed_step == "refine"
    assert "refine" in state.message and "PROVIDER_ERROR" in state.message
    assert statuses(state) == {"gen": P.COMPLETED, "refine": P.FAILED, "cutout": P.SKIPPED, "adjust": P.SKIPPED}
    refine = state.step("refine")
    assert (refine.attempt, refine.error_code, refine.error_message) == (3, ErrorCode.PROVIDER_ERROR, "boom")


def test_a_failing_branch_cancels_the_running_one():
    state, _ = record.create(request(DIAMOND), T0)
    state, _ = complete(state, "gen")
    left, right = state.step("left").task_id, state.step("right").task_id
    state, effects = record.on_task_final(state, final(left, TaskStatus.FAILED, code=ErrorCode.INVALID_INPUT), T0)
    assert effects == [CancelStep("right", right, TaskType.FACE_ENHANCER, f"workflow {state.workflow_id} is FAILED")]
    assert statuses(state) == {"gen": P.COMPLETED, "left": P.FAILED, "right": P.RUNNING, "join": P.SKIPPED}
    # the cancelled branch's end is recorded on its step; the workflow stays FAILED
    ended, effects = record.on_task_final(state, final(right, TaskStatus.CANCELLED), T0)
    assert effects == [] and ended.status is W.FAILED and ended.step("right").status is P.CANCELLED
    assert ended.version == state.version + 1 and ended.completed_at == state.completed_at


def test_a_step_task_cancelled_on_its_own_cancels_the_workflow():
    state, _ = record.create(request(FASHION), T0)
    state, effects = record.on_task_final(state, final(state.step("gen").task_id, TaskStatus.CANCELLED), T0)
    assert state.status is W.CANCELLED and "gen" in state.message and effects == []
    assert statuses(state)["refine"] is P.SKIPPED


def test_a_result_without_the_mapped_field_fails_the_next_step_as_invalid_input():
    state, _ = record.create(request(FASHION), T0)
    gen_task = state.step("gen").task_id
    done = final(gen_task, TaskStatus.COMPLETED)
    done = TaskState(**{**{f: getattr(done, f) for f in done.__dataclass_fields__},
                        "result": {"result_text": "no image", "metadata": {"model": "m", "provider": "p", "timing_ms": 1}}})
    state, effects = record.on_task_final(state, done, T0)
    assert effects == [] and state.status is W.FAILED and state.failed_step == "refine"
    refine = state.step("refine")
    assert refine.status is P.FAILED and refine.error_code is ErrorCode.INVALID_INPUT
    assert "result_image_url" in refine.error_message


# --------------------------------------------------------------------------- pause, resume


def test_pause_lets_running_steps_finish_and_starts_nothing_until_resume():
    state, _ = record.create(request(DIAMOND), T0)
    state, _ = complete(state, "gen")
    paused, effects = record.apply_command(state, command(state, WorkflowCommand.PAUSE), T0)
    assert paused.status is W.PAUSED and effects == [] and paused.version == state.version + 1
    assert record.apply_command(paused, command(paused, WorkflowCommand.PAUSE), T0) == (paused, [])
    paused, effects = complete(paused, "left")
    paused, effects2 = complete(paused, "right")
    assert effects == effects2 == [] and paused.status is W.PAUSED
    assert paused.step("join").status is P.PENDING
    resumed, effects = record.apply_command(paused, command(paused, WorkflowCommand.RESUME), T0)
    assert resumed.status is W.RUNNING and submitted(effects) == ["join"]
    done, _ = complete(resumed, "join")
    assert done.status is W.COMPLETED


def test_a_paused_workflow_whose_last_step_ends_completes():
    state, _ = record.create(request(FASHION[:1]), T0)
    paused, _ = record.apply_command(state, command(state, WorkflowCommand.PAUSE), T0)
    done, effects = complete(paused, "gen")
    assert done.status is W.COMPLETED and effects == []


def test_a_paused_workflow_still_fails_when_a_running_step_fails():
    state, _ = record.create(request(FASHION), T0)
    paused, _ = record.apply_command(state, command(state, WorkflowCommand.PAUSE), T0)
    failed, _ = record.on_task_final(paused, final(paused.step("gen").task_id, TaskStatus.FAILED,
                                                   code=ErrorCode.PROVIDER_TIMEOUT), T0)
    assert failed.status is W.FAILED


# --------------------------------------------------------------------------- cancel


@pytest.mark.parametrize("start", [True, False])
def test_cancel_ends_it_once_skipping_and_cancelling_steps(start: bool):
    state, _ = record.create(request(DIAMOND, start=start), T0)
    cancelled, effects = record.apply_command(
        state, command(state, WorkflowCommand.CANCEL, reason="not needed", requested_by="ops"), T0)
    assert cancelled.status is W.CANCELLED and cancelled.message == "not needed by ops"
    if start:
        assert effects == [CancelStep("gen", state.step("gen").task_id, TaskType.GENERATION,
                                      f"workflow {state.workflow_id} is CANCELLED")]
        assert statuses(cancelled)["gen"] is P.RUNNING
    else:
        assert effects == [] and statuses(cancelled)["gen"] is P.SKIPPED
    assert all(cancelled.step(s).status is P.SKIPPED for s in ("left", "right", "join"))
    for kind in WorkflowCommand:  # a terminal state is never left
        assert record.apply_command(cancelled, command(cancelled, kind), T0) == (cancelled, [])


def test_a_step_that_completes_after_the_cancel_is_recorded_and_starts_nothing():
    state, _ = record.create(request(FASHION), T0)
    cancelled, _ = record.apply_command(state, command(state, WorkflowCommand.CANCEL), T0)
    late, effects = complete(cancelled, "gen")
    assert effects == [] and late.status is W.CANCELLED and late.step("gen").status is P.COMPLETED
    assert late.step("refine").status is P.SKIPPED


# --------------------------------------------------------------------------- at least once


def test_repeats_and_strangers_change_nothing():
    state, _ = record.create(request(FASHION), T0)
    gen_task = state.step("gen").task_id
    assert record.on_task_final(state, final(str(uuid.uuid4()), TaskStatus.COMPLETED), T0) == (state, [])
    running = final(gen_task, TaskStatus.PROCESSING)
    assert record.on_task_final(state, running, T0) == (state, [])
    once, effects = complete(state, "gen")
    assert submitted(effects) == ["refine"]
    assert complete(once, "gen") == (once, [])  # the same final state again
    failed_late = final(gen_task, TaskStatus.FAILED, code=ErrorCode.PROVIDER_ERROR)
    assert record.on_task_final(once, failed_late, T0) == (once, [])


def test_the_state_survives_the_avro_round_trip():
    from schemas.codec import EventCodec

    codec = EventCodec()
    state, _ = record.create(request(DIAMOND), T0)
    state, _ = complete(state, "gen")
    assert codec.decode(codec.encode(state), expect=WorkflowState) == state
