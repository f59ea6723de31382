"""A generation's progress, pure: plans from plan_generation, final TaskStates in, effects out."""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generations.agentic import OrchestratedShot, attempt_task_id
from generations.catalog import InMemoryCatalog
from generations.evaluation import Evaluation
from generations.flow import (
    NO_IMAGE_REASON,
    CancelTask,
    EmitEvaluation,
    Evaluate,
    ParseJudgement,
    SubmitTask,
    cancel,
    judge_task_id,
    on_evaluation,
    on_task_final,
    start,
    start_judging,
)
from generations.plan import GenerationCancelRequested, GenerationRequested, plan_generation
from generations.record import (
    GENERATION_RECORD_CONTENT_TYPE,
    GenerationRecord,
    GenerationStatus,
    decode_record,
    encode_record,
)
from schemas.enums import ErrorCode, EvaluationDecision, TaskStatus, TaskType
from schemas.events import ResultMetadata, TaskResult
from schemas.task_params import DetailEnhancerParams, LlmInteractionParams
from state.lifecycle import TaskState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1, T2, T3 = (T0 + timedelta(seconds=s) for s in (1, 2, 3))
S = TaskStatus


# --------------------------------------------------------------------------- helpers


# One catalog for the module, so equal requests plan equal generations.
STORE = InMemoryCatalog()
SUBJECT = STORE.add_subject("Anna", "hf:studio/anna-lora", 0.8)
PRODUCT = STORE.add_product("Red Linen Dress", "/loras/red-linen-dress.safetensors", 0.65)


def begin(strategy: str = "GENERATE", *, now: datetime = T0, **extra):
    """start() on a freshly planned request: (plan, record, effects)."""
    store, subject, product = STORE, SUBJECT, PRODUCT
    if strategy == "GENERATE":
        request = {"strategy": "GENERATE", "subject_id": subject.id, "product_id": product.id,
                   "shot_type_string": "full-body shot", "seed": 41, **extra}
    else:
        request = {"strategy": "EDITING", "base_img_path": "s3://in/look.png", "product_id": product.id,
                   "tool": "PRODUCT_ENHANCEMENT", **extra}
    plan = plan_generation(request, store, random.Random(7))
    requested = GenerationRequested(plan=plan, requested_at=T0.isoformat(), origin_instance="eu-1",
                                    origin_zone="eu-west", origin_tenant_id="tenant-9",
                                    webhook_url="https://hooks.example.com/g")
    record, effects = start(requested, now=now)
    return plan, record, effects


def agentic(**extra):
    return begin(generation_type="AGENTIC", **extra)


def image(task_id: str, *, model: bool = False):
    """A COMPLETED task's result: the pydantic TaskResult or its JSON (the fold keeps either)."""
    result = TaskResult(result_image_url=f"s3://results/{task_id}.png", seed=7,
                        metadata=ResultMetadata(model="m", provider="p", timing_ms=10))
    return result if model else result.model_dump(mode="json")


def final(task_id: str, status: TaskStatus, *, result=None, code: ErrorCode | None = None,
          message: str | None = None, task_type: TaskType = TaskType.GENERATION) -> TaskState:
    if status is S.COMPLETED and result is None:
        result = image(task_id)
    if status is S.FAILED and code is None:
        code, message = ErrorCode.PROVIDER_ERROR, message or "GPU fell over"
    return TaskState(task_id=task_id, task_type=task_type, status=status, attempt=1,
                     progress=1.0 if status is S.COMPLETED else 0.5, version=4, created_at=T0, queued_at=T0,
                     started_at=T0, completed_at=T0, updated_at=T0, last_event_id=str(uuid.uuid4()),
                     result=result, error_code=code, error_message=message)


def submitted(effects) -> list:
    return [e.task for e in effects if isinstance(e, SubmitTask)]


def events(effects) -> list:
    return [e.event for e in effects if isinstance(e, EmitEvaluation)]


def shot_of(record: GenerationRecord, index: int = 0) -> OrchestratedShot:
    return OrchestratedShot.from_dict(record.predictions[index].shot)


def score_attempt(record, task_id, score, now=T1, reasons=("blurry (sharpness 0.12)",)):
    """COMPLETED → Evaluate → on_evaluation; returns the record and both functions' effects."""
    record, effects = on_task_final(record, final(task_id, S.COMPLETED), now=now)
    assert [type(e) for e in effects] == [Evaluate]
    record, more = on_evaluation(record, task_id, Evaluation(score, reasons, evaluator="quality"), now=now)
    return record, more


def run_shot(record, outcomes):
    """Drive prediction 0's shot: each outcome is a score or an ErrorCode (that attempt FAILED)."""
    emitted = []
    task_id = record.predictions[0].task_ids[0]
    for outcome in outcomes:
        if isinstance(outcome, ErrorCode):
            record, effects = on_task_final(record, final(task_id, S.FAILED, code=outcome), now=T1)
        else:
            record, effects = score_attempt(record, task_id, outcome)
        emitted += events(effects)
        retries = [t for t in submitted(effects) if t.orchestration.shot_id is not None]
        task_id = retries[0].task_id if retries else None
    return record, emitted


# --------------------------------------------------------------------------- start and BASE


def test_start_submits_every_task_and_copies_the_request():
    plan, record, effects = begin(batch_size=2)
    assert submitted(effects) == list(plan.tasks)
    assert record.generation_id == plan.generation_id and record.status is GenerationStatus.RUNNING
    assert [p.index for p in record.predictions] == [0, 1]
    assert [p.status for p in record.predictions] == [S.PROCESSING] * 2
    assert [p.task_ids for p in record.predictions] == [(t.task_id,) for t in plan.tasks]
    assert all(p.shot is None for p in record.predictions)
    assert (record.origin_instance, record.origin_zone, record.origin_tenant_id, record.webhook_url) == (
        "eu-1", "eu-west", "tenant-9", "https://hooks.example.com/g")
    assert record.prompt == plan.prompt and record.version == 1 and record.created_at == record.updated_at == T0
    # Deterministic: the orchestrator skips a request whose generation already has a record.
    assert begin(batch_size=2) == (plan, record, effects)


def test_base_batch_of_two_completes_only_when_both_are_done():
    plan, record, _ = begin(batch_size=2)
    first, second = (t.task_id for t in plan.tasks)
    record, effects = on_task_final(record, final(first, S.COMPLETED, result=image(first, model=True)), now=T1)
    assert effects == [] and record.status is GenerationStatus.RUNNING and record.completed_at is None
    assert record.predictions[0].status is S.COMPLETED and record.predictions[1].status is S.PROCESSING
    assert record.predictions[0].result == image(first)  # a pydantic TaskResult is stored as JSON
    assert (record.version, record.updated_at) == (2, T1)
    record, effects = on_task_final(record, final(second, S.COMPLETED), now=T2)
    assert effects == [] and record.status is GenerationStatus.COMPLETED
    assert (record.version, record.completed_at) == (3, T2)
    assert [p.task_id for p in record.predictions] == [first, second]


@pytest.mark.parametrize(("outcomes", "expected"), [
    ((S.COMPLETED, S.FAILED), GenerationStatus.COMPLETED),
    ((S.FAILED, S.FAILED), GenerationStatus.FAILED),
    ((S.CANCELLED, S.FAILED), GenerationStatus.FAILED),
    ((S.CANCELLED, S.CANCELLED), GenerationStatus.CANCELLED),
    ((S.CANCELLED, S.COMPLETED), GenerationStatus.COMPLETED),
])
def test_base_generation_status_when_every_prediction_ended(outcomes, expected):
    plan, record, _ = begin(batch_size=2)
    for task, status in zip(plan.tasks, outcomes):
        failed = status is S.FAILED
        record, effects = on_task_final(record, final(task.task_id, status, code=ErrorCode.CONTENT_POLICY if failed
                                                      else None, message="nsfw" if failed else None), now=T1)
        assert effects == []
    assert record.status is expected and record.completed_at == T1
    for p, status in zip(record.predictions, outcomes):
        assert p.status is status
        assert (p.error_code, p.error_message) == (("CONTENT_POLICY", "nsfw") if status is S.FAILED else (None, None))


def test_unknown_tasks_and_non_final_states_change_nothing():
    _, record, _ = begin()
    assert on_task_final(record, final(str(uuid.uuid4()), S.COMPLETED), now=T1) == (record, [])
    running = dataclasses.replace(final(record.predictions[0].task_id, S.COMPLETED), status=S.PROCESSING)
    assert on_task_final(record, running, now=T1)[0] is record
    assert on_evaluation(record, str(uuid.uuid4()), Evaluation(0.9), now=T1) == (record, [])
    judge = LlmInteractionParams(prompt="judge")
    assert start_judging(record, record.predictions[0].task_id, judge, now=T1) == (record, [])  # BASE: no shot


# --------------------------------------------------------------------------- AGENTIC


def test_agentic_start_begins_a_shot_per_prediction():
    plan, record, effects = agentic(batch_size=2, max_attempts=4, min_confidence_score=0.8)
    assert submitted(effects) == list(plan.tasks)
    for p, task in zip(record.predictions, plan.tasks):
        shot = OrchestratedShot.from_dict(p.shot)
        assert shot.shot_id == task.orchestration.shot_id and shot.prediction_index == p.index
        assert (shot.settings.max_attempts, shot.settings.min_confidence_score) == (4, 0.8)
        assert [(a.task_id, a.params, a.status) for a in shot.attempts] == [(task.task_id, task.params, S.PENDING)]


def test_agentic_accept_at_attempt_1():
    plan, record, _ = agentic()
    task = plan.tasks[0]
    record, effects = on_task_final(record, final(task.task_id, S.COMPLETED), now=T1)
    [evaluate] = effects
    assert evaluate.task_id == task.task_id and evaluate.image_url == f"s3://results/{task.task_id}.png"
    assert evaluate.provider == "auto"
    ctx = evaluate.context
    assert (ctx.task_type, ctx.prompt, ctx.generation_id, ctx.shot_id, ctx.attempt) == (
        TaskType.GENERATION, task.params.prompt, plan.generation_id, task.orchestration.shot_id, 1)
    # The requested size, so the evaluator can tell a stretched or cropped result.
    assert (ctx.width, ctx.height) == (task.params.width, task.params.height) and ctx.width
    assert record.status is GenerationStatus.RUNNING and record.version == 2  # the attempt's result is kept
    assert record.predictions[0].results == {task.task_id: image(task.task_id)}
    record, effects = on_evaluation(record, task.task_id, Evaluation(0.9, (), evaluator="quality"), now=T2)
    [event] = events(effects)
    assert len(effects) == 1
    assert (event.score, event.decision, event.accepted_task_id, event.evaluator, event.evaluated_attempt) == (
        0.9, EvaluationDecision.ACCEPT, task.task_id, "quality", 1)
    env = event.envelope
    assert env.event_id == str(uuid.uuid5(uuid.UUID("33fcb214-5a3f-41fd-9756-802d5c163c21"),
                                          f"{task.task_id}/evaluation"))
    assert (env.task_id, env.task_type, env.attempt, env.occurred_at, env.source) == (
        task.task_id, TaskType.GENERATION, 1, T2, "/compute/processors/orchestrator")
    assert (env.origin_instance, env.origin_zone, env.origin_tenant_id) == ("eu-1", "eu-west", "tenant-9")
    assert (event.generation_id, event.shot_id) == (plan.generation_id, task.orchestration.shot_id)
    p = record.predictions[0]
    assert (p.status, p.task_id, p.result) == (S.COMPLETED, task.task_id, image(task.task_id))
    assert record.status is GenerationStatus.COMPLETED and (record.version, record.completed_at) == (3, T2)


def test_agentic_reject_then_accept_at_attempt_2_with_a_changed_seed():
    plan, record, _ = agentic()
    first = plan.tasks[0]
    record, effects = score_attempt(record, first.task_id, 0.4)
    [event] = events(effects)
    [retry] = submitted(effects)
    assert isinstance(effects[0], EmitEvaluation)  # the evaluation is recorded before the retry runs
    assert event.decision is EvaluationDecision.RETRY and event.accepted_task_id is None
    assert event.reasons == ["blurry (sharpness 0.12)"]
    assert retry.task_id == attempt_task_id(first.orchestration.shot_id, 2)
    assert retry.orchestration == first.orchestration and retry.task_type is TaskType.GENERATION
    assert retry.params.seed != first.params.seed
    assert retry.params.prompt == f"{first.params.prompt}, sharp focus, crisp fine detail"  # the reason steers
    p = record.predictions[0]
    assert p.task_ids == (first.task_id, retry.task_id) and p.status is S.PROCESSING
    record, effects = score_attempt(record, retry.task_id, 0.8)
    [event] = events(effects)
    assert (event.evaluated_attempt, event.decision, event.accepted_task_id) == (
        2, EvaluationDecision.ACCEPT, retry.task_id)
    p = record.predictions[0]
    assert (p.status, p.task_id, p.result) == (S.COMPLETED, retry.task_id, image(retry.task_id))
    assert record.status is GenerationStatus.COMPLETED


@pytest.mark.parametrize(("scores", "best"), [((0.5, 0.6, 0.4), 2), ((0.6, 0.3, 0.6), 1), ((0.2, 0.3, 0.65), 3)])
def test_three_rejections_accept_the_best_of_three(scores, best):
    plan, record, _ = agentic()
    record, emitted = run_shot(record, scores)
    assert [e.decision for e in emitted] == [EvaluationDecision.RETRY] * 2 + [EvaluationDecision.ACCEPT_BEST]
    best_id = attempt_task_id(plan.tasks[0].orchestration.shot_id, best)
    assert emitted[-1].accepted_task_id == best_id
    p = record.predictions[0]
    assert (p.status, p.task_id, p.result) == (S.COMPLETED, best_id, image(best_id))
    assert len(p.results) == 3 and record.status is GenerationStatus.COMPLETED


def test_a_failed_attempt_counts_and_the_best_of_the_scored_is_accepted():
    plan, record, _ = agentic()
    record, emitted = run_shot(record, [ErrorCode.PROVIDER_TIMEOUT, 0.3, 0.5])
    # The FAILED attempt has no score, so no evaluation event; it still used one of three attempts.
    assert [(e.evaluated_attempt, e.decision) for e in emitted] == [(2, EvaluationDecision.RETRY),
                                                                    (3, EvaluationDecision.ACCEPT_BEST)]
    shot = shot_of(record)
    assert [a.status for a in shot.attempts] == [S.FAILED, S.COMPLETED, S.COMPLETED]
    assert shot.attempts[0].error_code is ErrorCode.PROVIDER_TIMEOUT
    third = attempt_task_id(shot.shot_id, 3)
    assert record.predictions[0].task_id == third and record.status is GenerationStatus.COMPLETED


def test_every_attempt_failed_gives_up_and_fails_the_generation():
    _, record, _ = agentic()
    record, emitted = run_shot(record, [ErrorCode.PROVIDER_ERROR, ErrorCode.PROVIDER_ERROR, ErrorCode.CONTENT_POLICY])
    assert emitted == []
    p = record.predictions[0]
    assert p.status is S.FAILED and p.error_code == "CONTENT_POLICY" and p.result is None
    assert p.error_message.startswith("every attempt failed (3 of 3)")
    assert len(p.task_ids) == 3 and record.status is GenerationStatus.FAILED and record.completed_at == T1


def test_a_result_without_an_image_scores_zero():
    plan, record, _ = agentic()
    task_id = plan.tasks[0].task_id
    text_only = {"result_text": "sorry", "metadata": {"model": "m", "provider": "p", "timing_ms": 1}}
    record2, effects = on_task_final(record, final(task_id, S.COMPLETED, result=text_only), now=T1)
    [event] = events(effects)
    assert (event.score, event.reasons, event.evaluator) == (0.0, [NO_IMAGE_REASON], "orchestrator")
    assert len(submitted(effects)) == 1 and record2.version == record.version + 1  # one change, one version
    assert on_task_final(record2, final(task_id, S.COMPLETED, result=text_only), now=T2) == (record2, [])


def test_a_cancelled_attempt_cancels_the_prediction_without_retry():
    plan, record, _ = agentic(batch_size=2)
    first, second = (t.task_id for t in plan.tasks)
    record, effects = on_task_final(record, final(first, S.CANCELLED), now=T1)
    assert effects == [] and record.predictions[0].status is S.CANCELLED
    shot = shot_of(record)
    assert shot.done and [a.status for a in shot.attempts] == [S.CANCELLED]
    assert on_evaluation(record, first, Evaluation(0.9), now=T2) == (record, [])
    record, _ = on_task_final(record, final(second, S.CANCELLED), now=T2)
    assert record.status is GenerationStatus.CANCELLED


# --------------------------------------------------------------------------- the judge


def test_a_task_evaluator_judges_through_an_llm_task():
    plan, record, _ = agentic(evaluation_provider="vlm")
    task = plan.tasks[0]
    record, [evaluate] = on_task_final(record, final(task.task_id, S.COMPLETED), now=T1)
    assert evaluate.provider == "vlm"
    params = LlmInteractionParams(prompt="score this image", temperature=0.0, max_tokens=256)
    record, effects = start_judging(record, task.task_id, params, now=T2)
    [judge] = submitted(effects)
    assert judge.task_id == judge_task_id(task.task_id) and judge.task_type is TaskType.LLM_INTERACTION
    assert judge.params == params and judge.orchestration.shot_id is None
    assert judge.orchestration.generation_id == plan.generation_id and record.judges == {judge.task_id: task.task_id}
    assert start_judging(record, task.task_id, params, now=T3) == (record, [])
    answer = {"result_text": '{"score": 0.9, "reasons": []}',
              "metadata": {"model": "m", "provider": "p", "timing_ms": 1}}
    done = final(judge.task_id, S.COMPLETED, result=answer, task_type=TaskType.LLM_INTERACTION)
    same, [parse] = on_task_final(record, done, now=T3)
    # The attempt's image goes with the answer (for a combined evaluator or the weight-free fallback).
    assert same is record and parse == ParseJudgement(task.task_id, answer["result_text"], "vlm", evaluate.context,
                                                      evaluate.image_url)
    record, effects = on_evaluation(record, task.task_id, Evaluation(0.9, evaluator="vlm"), now=T3)
    assert events(effects)[0].evaluator == "vlm" and record.status is GenerationStatus.COMPLETED
    assert on_task_final(record, done, now=T3) == (record, [])


@pytest.mark.parametrize(("status", "reason"), [(S.FAILED, "evaluation failed: PROVIDER_ERROR"),
                                                 (S.CANCELLED, "evaluation failed: CANCELLED")])
def test_a_failed_judge_scores_zero(status, reason):
    plan, record, _ = agentic(evaluation_provider="vlm")
    task_id = plan.tasks[0].task_id
    record, _ = on_task_final(record, final(task_id, S.COMPLETED), now=T1)
    record, [judge] = start_judging(record, task_id, LlmInteractionParams(prompt="score"), now=T1)
    record, effects = on_task_final(record, final(judge.task.task_id, status), now=T2)
    [event] = events(effects)
    assert (event.score, event.reasons, event.evaluator, event.decision) == (0.0, [reason], "vlm",
                                                                             EvaluationDecision.RETRY)
    assert len(submitted(effects)) == 1


# --------------------------------------------------------------------------- the prompt step


def test_the_prompt_step_submits_the_generation_tasks_with_the_written_prompt():
    plan, record, effects = agentic(batch_size=2, auto_generate_prompt=True)
    assert submitted(effects) == [plan.prompt_step.task] and record.prompt_task_id == plan.prompt_step.task.task_id
    assert [p.status for p in record.predictions] == [S.PENDING] * 2 and record.prompt is None
    assert [p.task_id for p in record.predictions] == [w.task_id for w in plan.prompt_step.waiting]
    assert all(p.shot is None and p.task_ids == () for p in record.predictions)
    answer = {"result_text": 'Prompt: "Anna strides through a sunlit loft"',
              "metadata": {"model": "m", "provider": "p", "timing_ms": 1}}
    done = final(record.prompt_task_id, S.COMPLETED, result=answer, task_type=TaskType.LLM_INTERACTION)
    record, effects = on_task_final(record, done, now=T1)
    tasks = submitted(effects)
    assert [t.task_id for t in tasks] == [w.task_id for w in plan.prompt_step.waiting]
    assert {t.params.prompt for t in tasks} == {"Anna strides through a sunlit loft"} == {record.prompt}
    assert [p.status for p in record.predictions] == [S.PROCESSING] * 2 and record.message is None
    assert shot_of(record, 1).attempts[0].params == tasks[1].params  # the shot starts with its first task
    assert on_task_final(record, done, now=T2) == (record, [])


def test_a_failed_prompt_step_falls_back_to_the_template_prompt():
    plan, record, _ = begin(auto_generate_prompt=True)
    failed = final(record.prompt_task_id, S.FAILED, code=ErrorCode.PROVIDER_TIMEOUT, message="LLM timed out")
    record, effects = on_task_final(record, failed, now=T1)
    [task] = submitted(effects)
    assert task.params.prompt == plan.prompt_step.fallback_prompt == record.prompt
    assert "PROVIDER_TIMEOUT" in record.message and "template prompt" in record.message
    record, _ = on_task_final(record, final(task.task_id, S.COMPLETED), now=T2)
    assert record.status is GenerationStatus.COMPLETED


def test_a_cancelled_prompt_step_cancels_the_generation():
    _, record, _ = begin(batch_size=3, auto_generate_prompt=True)
    record, effects = on_task_final(record, final(record.prompt_task_id, S.CANCELLED), now=T1)
    assert effects == [] and record.status is GenerationStatus.CANCELLED
    assert {p.status for p in record.predictions} == {S.CANCELLED}


# --------------------------------------------------------------------------- the follow-up


def test_product_enhancement_runs_the_detail_follow_up_on_the_edit():
    plan, record, _ = begin("EDITING")  # EDITING has one prediction
    edit = plan.tasks[0].task_id
    record, effects = on_task_final(record, final(edit, S.COMPLETED, task_type=TaskType.EDITING), now=T1)
    [follow] = submitted(effects)
    assert follow == plan.follow_ups[0].complete(base_image_url=f"s3://results/{edit}.png")
    assert isinstance(follow.params, DetailEnhancerParams) and follow.orchestration.shot_id is None
    p = record.predictions[0]
    assert (p.status, p.follow_up_task_id, p.task_ids) == (S.PROCESSING, follow.task_id, (edit, follow.task_id))
    assert on_task_final(record, final(edit, S.COMPLETED), now=T2) == (record, [])
    record, effects = on_task_final(record, final(follow.task_id, S.COMPLETED), now=T2)
    p = record.predictions[0]
    assert effects == [] and (p.status, p.task_id, p.result) == (S.COMPLETED, follow.task_id, image(follow.task_id))
    assert p.results == {edit: image(edit), follow.task_id: image(follow.task_id)}
    assert record.status is GenerationStatus.COMPLETED
    assert on_task_final(record, final(follow.task_id, S.COMPLETED), now=T3) == (record, [])


@pytest.mark.parametrize("status", [S.FAILED, S.CANCELLED])
def test_a_failed_follow_up_ends_its_prediction(status):
    plan, record, _ = begin("EDITING")
    edit = plan.tasks[0].task_id
    record, [follow] = on_task_final(record, final(edit, S.COMPLETED), now=T1)
    record, effects = on_task_final(record, final(follow.task.task_id, status), now=T2)
    p = record.predictions[0]
    assert effects == [] and p.status is status and record.status.value == status.value
    assert p.error_code == ("PROVIDER_ERROR" if status is S.FAILED else None)


def test_an_agentic_edit_runs_its_follow_up_on_the_accepted_attempt():
    plan, record, _ = begin("EDITING", generation_type="AGENTIC", max_attempts=2)
    shot_id = plan.tasks[0].orchestration.shot_id
    record, emitted = run_shot(record, [0.6, 0.5])
    first = attempt_task_id(shot_id, 1)
    assert emitted[-1].accepted_task_id == first
    p = record.predictions[0]
    assert p.status is S.PROCESSING and p.task_id == first and p.follow_up_task_id == plan.follow_ups[0].task_id
    record, _ = on_task_final(record, final(p.follow_up_task_id, S.COMPLETED), now=T2)
    assert record.predictions[0].result == image(p.follow_up_task_id) and record.status is GenerationStatus.COMPLETED


# --------------------------------------------------------------------------- cancelling


def cancel_request(record, reason="not needed any more"):
    return GenerationCancelRequested(generation_id=record.generation_id, requested_at=T2.isoformat(),
                                     reason=reason, requested_by="api-key:k1")


def cancelled_tasks(effects) -> list[tuple[str, TaskType]]:
    assert all(isinstance(e, CancelTask) for e in effects), effects
    return [(e.task_id, e.task_type) for e in effects]


def test_cancel_stops_a_running_agentic_shot_and_nothing_is_retried_after():
    plan, record, _ = agentic(batch_size=2)
    first, second = (t.task_id for t in plan.tasks)
    record, effects = cancel(record, cancel_request(record), now=T2)
    assert cancelled_tasks(effects) == [(first, TaskType.GENERATION), (second, TaskType.GENERATION)]
    assert effects[0] == CancelTask(first, TaskType.GENERATION, "not needed any more", "api-key:k1")
    assert record.status is GenerationStatus.CANCELLED and record.completed_at == T2
    assert record.cancel_requested_at == T2 and record.version == 2
    assert record.message == "the generation was cancelled by api-key:k1: not needed any more"
    for i in (0, 1):
        p, shot = record.predictions[i], shot_of(record, i)
        assert p.status is S.CANCELLED and p.error_message == record.message and p.error_code is None
        assert shot.done and [a.status for a in shot.attempts] == [S.CANCELLED]
    # What the tasks report later changes nothing: no evaluation, no RETRY, no effects.
    for state in (final(first, S.COMPLETED), final(first, S.FAILED), final(second, S.CANCELLED)):
        assert on_task_final(record, state, now=T3) == (record, [])
    assert on_evaluation(record, first, Evaluation(0.1), now=T3) == (record, [])
    params = LlmInteractionParams(prompt="score")
    assert start_judging(record, first, params, now=T3) == (record, [])
    # Idempotent: a second cancel is the same record, and asks for nothing.
    assert cancel(record, cancel_request(record, "again"), now=T3) == (record, [])


def test_cancel_keeps_completed_predictions_and_the_generation_completes():
    plan, record, _ = begin(batch_size=2)
    first, second = (t.task_id for t in plan.tasks)
    record, _ = on_task_final(record, final(first, S.COMPLETED), now=T1)
    record, effects = cancel(record, cancel_request(record, None), now=T2)
    assert cancelled_tasks(effects) == [(second, TaskType.GENERATION)] and effects[0].reason is None
    assert [p.status for p in record.predictions] == [S.COMPLETED, S.CANCELLED]
    assert record.predictions[0].result == image(first)
    assert record.status is GenerationStatus.COMPLETED and record.message.endswith("cancelled by api-key:k1")
    assert on_task_final(record, final(second, S.COMPLETED), now=T3) == (record, [])


def test_cancel_with_a_failed_prediction_and_none_completed_is_cancelled():
    plan, record, _ = begin(batch_size=2)
    record, _ = on_task_final(record, final(plan.tasks[0].task_id, S.FAILED), now=T1)
    record, effects = cancel(record, cancel_request(record), now=T2)
    assert cancelled_tasks(effects) == [(plan.tasks[1].task_id, TaskType.GENERATION)]
    assert [p.status for p in record.predictions] == [S.FAILED, S.CANCELLED]
    assert record.status is GenerationStatus.CANCELLED


def test_cancel_of_a_finished_generation_changes_nothing():
    plan, record, _ = begin()
    done, _ = on_task_final(record, final(plan.tasks[0].task_id, S.COMPLETED), now=T1)
    assert cancel(done, cancel_request(done), now=T2) == (done, [])
    failed, _ = on_task_final(record, final(plan.tasks[0].task_id, S.FAILED), now=T1)
    assert cancel(failed, cancel_request(failed), now=T2) == (failed, [])


def test_cancel_while_waiting_for_the_prompt_cancels_the_prompt_task():
    plan, record, _ = agentic(batch_size=2, auto_generate_prompt=True)
    record, effects = cancel(record, cancel_request(record), now=T2)
    assert cancelled_tasks(effects) == [(plan.prompt_step.task.task_id, TaskType.LLM_INTERACTION)]
    assert record.status is GenerationStatus.CANCELLED and {p.shot for p in record.predictions} == {None}
    assert {p.status for p in record.predictions} == {S.CANCELLED}
    answer = {"result_text": "a prompt", "metadata": {"model": "m", "provider": "p", "timing_ms": 1}}
    done = final(record.prompt_task_id, S.COMPLETED, result=answer, task_type=TaskType.LLM_INTERACTION)
    assert on_task_final(record, done, now=T3) == (record, [])  # no GENERATION task submitted


def test_cancel_while_judging_cancels_the_judge_not_the_completed_attempt():
    plan, record, _ = agentic(evaluation_provider="vlm")
    task_id = plan.tasks[0].task_id
    record, _ = on_task_final(record, final(task_id, S.COMPLETED), now=T1)
    record, [judge] = start_judging(record, task_id, LlmInteractionParams(prompt="score"), now=T1)
    record, effects = cancel(record, cancel_request(record), now=T2)
    assert cancelled_tasks(effects) == [(judge.task.task_id, TaskType.LLM_INTERACTION)]
    assert [a.status for a in shot_of(record).attempts] == [S.CANCELLED]
    assert record.predictions[0].results == {task_id: image(task_id)}  # kept
    answer = {"result_text": '{"score": 0.9, "reasons": []}',
              "metadata": {"model": "m", "provider": "p", "timing_ms": 1}}
    done = final(judge.task.task_id, S.COMPLETED, result=answer, task_type=TaskType.LLM_INTERACTION)
    assert on_task_final(record, done, now=T3) == (record, [])  # no ParseJudgement any more


def test_cancel_while_a_retry_runs_cancels_only_the_running_attempt():
    plan, record, _ = agentic(max_attempts=3)
    first = plan.tasks[0].task_id
    record, effects = score_attempt(record, first, 0.2)
    [retry] = submitted(effects)
    record, effects = cancel(record, cancel_request(record), now=T2)
    assert cancelled_tasks(effects) == [(retry.task_id, TaskType.GENERATION)]
    assert [a.status for a in shot_of(record).attempts] == [S.COMPLETED, S.CANCELLED]
    assert on_task_final(record, final(retry.task_id, S.FAILED), now=T3) == (record, [])


def test_cancel_while_the_follow_up_runs_cancels_the_follow_up():
    plan, record, _ = begin("EDITING")
    edit = plan.tasks[0].task_id
    record, [follow] = on_task_final(record, final(edit, S.COMPLETED, task_type=TaskType.EDITING), now=T1)
    record, effects = cancel(record, cancel_request(record), now=T2)
    assert cancelled_tasks(effects) == [(follow.task.task_id, TaskType.DETAIL_ENHANCER)]
    p = record.predictions[0]
    assert p.status is S.CANCELLED and p.result == image(edit) and record.status is GenerationStatus.CANCELLED
    assert on_task_final(record, final(follow.task.task_id, S.COMPLETED), now=T3) == (record, [])


def test_a_cancelled_record_round_trips_through_json():
    _, record, _ = agentic()
    record, _ = cancel(record, cancel_request(record), now=T2)
    assert decode_record(encode_record(record)) == record


# --------------------------------------------------------------------------- idempotency


def test_every_input_applied_twice_changes_nothing_the_second_time():
    plan, record, _ = agentic(batch_size=2)
    first, second = (t.task_id for t in plan.tasks)
    once, effects = on_task_final(record, final(first, S.COMPLETED), now=T1)
    again, replayed = on_task_final(once, final(first, S.COMPLETED), now=T2)
    # Still waiting for its score: the same record, and Evaluate again (the lost-evaluation recovery).
    assert again is once and replayed == effects
    evaluated, effects = on_evaluation(once, first, Evaluation(0.2), now=T2)
    assert submitted(effects) and on_evaluation(evaluated, first, Evaluation(0.2), now=T3) == (evaluated, [])
    assert on_evaluation(evaluated, first, Evaluation(0.9), now=T3) == (evaluated, [])
    assert on_task_final(evaluated, final(first, S.COMPLETED), now=T3) == (evaluated, [])
    failed, _ = on_task_final(evaluated, final(second, S.FAILED), now=T3)
    assert on_task_final(failed, final(second, S.FAILED), now=T3) == (failed, [])


def test_nothing_changes_a_finished_generation():
    plan, record, _ = begin()
    task_id = plan.tasks[0].task_id
    done, _ = on_task_final(record, final(task_id, S.COMPLETED), now=T1)
    assert done.status is GenerationStatus.COMPLETED
    for state in (final(task_id, S.COMPLETED), final(task_id, S.FAILED), final(task_id, S.CANCELLED)):
        assert on_task_final(done, state, now=T2)[0] is done
    assert on_evaluation(done, task_id, Evaluation(0.1), now=T2) == (done, [])


def _simulate(outcomes, duplicate):
    """An AGENTIC batch of 2 carried out like the orchestrator does, each final state and effect
    delivered twice where ``duplicate()`` says so. Attempt n of each shot ends as
    ``outcomes[n - 1]``: a score, or None for FAILED."""
    _, record, first = agentic(batch_size=2)
    attempt_of = {attempt_task_id(p.shot["shot_id"], n): n
                  for p in record.predictions for n in range(1, len(outcomes) + 1)}
    queue, emitted = deque(first), []

    def apply(step):
        nonlocal record
        record, effects = step(record)
        queue.extend(effects)

    while queue:
        effect = queue.popleft()
        for _ in range(1 + duplicate()):
            if isinstance(effect, SubmitTask):
                outcome = outcomes[attempt_of[effect.task.task_id] - 1]
                state = final(effect.task.task_id, S.FAILED if outcome is None else S.COMPLETED)
                apply(lambda r: on_task_final(r, state, now=T1))
            elif isinstance(effect, Evaluate):
                score = outcomes[attempt_of[effect.task_id] - 1]
                apply(lambda r: on_evaluation(r, effect.task_id, Evaluation(score, evaluator="scripted"), now=T1))
            else:
                emitted.append(effect.event)
    return record, emitted


@settings(max_examples=40, deadline=None)
@given(outcomes=st.lists(st.sampled_from([None, 0.1, 0.5, 0.69, 0.7, 0.95]), min_size=3, max_size=3),
       flips=st.lists(st.booleans(), min_size=1, max_size=40))
def test_duplicate_deliveries_end_in_the_same_record(outcomes, flips):
    clean, clean_events = _simulate(outcomes, lambda: False)
    flips = iter(flips)
    noisy, noisy_events = _simulate(outcomes, lambda: next(flips, False))
    assert noisy == clean and clean.status is not GenerationStatus.RUNNING
    # A replayed decision writes the same event (same event id), never a different one.
    assert {e.envelope.event_id: e for e in noisy_events} == {e.envelope.event_id: e for e in clean_events}


# --------------------------------------------------------------------------- the document


def test_the_record_round_trips_through_json():
    plan, record, _ = begin("EDITING", generation_type="AGENTIC", evaluation_provider="vlm")
    task_id = plan.tasks[0].task_id
    record, _ = on_task_final(record, final(task_id, S.COMPLETED), now=T1)
    record, _ = start_judging(record, task_id, LlmInteractionParams(prompt="score"), now=T1)
    assert decode_record(encode_record(record)) == record
    _, prompted, _ = agentic(auto_generate_prompt=True)
    assert decode_record(encode_record(prompted)) == prompted
    finished, _ = run_shot(agentic()[1], [0.3, ErrorCode.STORAGE_ERROR, 0.4])
    assert finished.status is GenerationStatus.COMPLETED and decode_record(encode_record(finished)) == finished
    assert GENERATION_RECORD_CONTENT_TYPE.startswith(b"application/json")
