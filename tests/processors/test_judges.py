"""The model-based evaluators' side in the processors: the ``vlm`` and ``clip`` tasks' parameters
(the LLM_INTERACTION contract of the worker), the alignment answer's parsing, the
quality × alignment combination, what ``auto`` resolves to, and the orchestrator carrying a
combined evaluation through Evaluate → judge task → ParseJudgement, replays included."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from PIL import Image

from generations.agentic import revise_prompt
from generations.flow import Evaluate, ParseJudgement, judge_task_id, on_task_final
from processors.evaluators import (
    ClipAlignment,
    CombinedEvaluator,
    Evaluation,
    EvaluationContext,
    EvaluatorError,
    EvaluatorSettings,
    QualityAndAlignment,
    QualityEvaluator,
    UnparseableJudgement,
    VlmJudge,
    default_registry,
    parse_alignment,
)
from processors.evaluators.scripted import PromptScriptedEvaluator
from processors.orchestrator import Orchestrator
from schemas.enums import EvaluationDecision, TaskType
from tests.processors.scripted import T0
from tests.processors.test_generations_app import FakeOutbox, _completed, _judged, request

T = TypeVar("T")
URL = "s3://results/a.png"
CLIP_ID = "openai/clip-vit-large-patch14"
RED_DRESS = EvaluationContext(prompt=" a red dress ")


# --------------------------------------------------------------------------- the task contract


def test_the_vlm_judge_sends_the_model_only_when_one_is_configured():
    named = VlmJudge(EvaluatorSettings(vlm_model="Qwen/Qwen2-VL-2B-Instruct")).request(URL, RED_DRESS)
    assert named.provider_config == {"image_urls": [URL], "model": "Qwen/Qwen2-VL-2B-Instruct"}
    assert named.provider_type is None  # the worker's default provider (transformers)
    served = VlmJudge(EvaluatorSettings(vlm_provider_type="transformers")).request(URL, RED_DRESS)
    assert served.provider_config == {"image_urls": [URL]} and served.provider_type == "transformers"
    assert served.temperature == 0.0 and '"a red dress"' in served.prompt


def test_the_clip_task_carries_the_prompt_and_the_image():
    params = ClipAlignment(EvaluatorSettings(clip_model=CLIP_ID)).request(URL, RED_DRESS)
    assert (params.prompt, params.provider_type) == ("a red dress", "clip")
    assert params.provider_config == {"image_urls": [URL], "model": CLIP_ID}
    own = ClipAlignment(EvaluatorSettings(clip_provider_type="clip-onnx")).request(URL, RED_DRESS)
    assert own.provider_type == "clip-onnx" and own.provider_config == {"image_urls": [URL]}
    with pytest.raises(EvaluatorError, match="no prompt"):
        ClipAlignment(EvaluatorSettings(clip_model=CLIP_ID)).request(URL, EvaluationContext())
    with pytest.raises(EvaluatorError, match="clip_model"):
        ClipAlignment(EvaluatorSettings())


def test_the_clip_answer_is_parsed_into_an_alignment():
    clip = ClipAlignment(EvaluatorSettings(clip_model=CLIP_ID))
    on = clip.parse('{"similarity": 0.33, "score": 0.82, "model": "m"}')
    assert (on.score, on.reasons, on.evaluator) == (0.82, (), "clip")
    assert on.signals == {"alignment": 0.82, "clip_similarity": 0.33}
    off = clip.parse('{"similarity": 0.12, "score": 0.31, "model": "m"}')
    assert off.reasons == ("off-prompt (alignment 0.31)",)
    assert parse_alignment('{"similarity": 1, "score": 1.7}') == (1.0, 1.0)  # clamped to 0..1
    assert parse_alignment('{"similarity": -0.2, "score": -0.1}') == (0.0, -0.2)


@pytest.mark.parametrize("text", ["not json", "", "[0.5]", '{"similarity": 0.2}', '{"score": "high", "similarity": 0}',
                                  '{"score": true, "similarity": 0.1}', '{"score": NaN, "similarity": 0.1}',
                                  '{"score": 0.5, "similarity": null}'])
def test_an_answer_off_the_contract_is_unparseable(text):
    with pytest.raises(UnparseableJudgement):
        parse_alignment(text)


# --------------------------------------------------------------------------- the combination


def test_quality_and_alignment_combine_by_their_geometric_mean_keeping_both_reasons():
    combined = QualityAndAlignment(EvaluatorSettings(clip_model=CLIP_ID))
    assert isinstance(combined, CombinedEvaluator) and isinstance(combined.local, QualityEvaluator)
    judged = combined.parse('{"similarity": 0.1, "score": 0.25}')
    local = Evaluation(0.9, ("slightly soft",), {"sharpness": 0.8}, "quality")
    result = combined.combine(judged, local)
    assert result.score == pytest.approx(math.sqrt(0.9 * 0.25))  # 0.47: a good image, off-prompt
    assert result.reasons == ("slightly soft", "off-prompt (alignment 0.25)")
    assert result.signals == {"sharpness": 0.8, "alignment": 0.25, "clip_similarity": 0.1, "quality": 0.9}
    assert result.evaluator == "quality+clip"
    noise = combined.combine(combined.parse('{"similarity": 0.3, "score": 0.95}'), Evaluation(0.0))
    assert noise.score == 0.0  # on-prompt does not rescue an unusable image
    assert combined.applies(RED_DRESS) and not combined.applies(EvaluationContext(prompt=" "))
    # The reason asks the prompt revision (every retry) for faithfulness.
    assert revise_prompt("a red dress", result.reasons[1:]) == "a red dress, faithful to every detail of the description"


@pytest.mark.parametrize("settings, expected", [
    (EvaluatorSettings(), QualityEvaluator),
    (EvaluatorSettings(clip_model=CLIP_ID), QualityAndAlignment),
    (EvaluatorSettings(clip_provider_type="clip"), QualityAndAlignment),
    (EvaluatorSettings(vlm_model="Qwen/Qwen2-VL-2B-Instruct"), VlmJudge),
    (EvaluatorSettings(vlm_provider_type="transformers"), VlmJudge),
    (EvaluatorSettings(vlm_model="Qwen/Qwen2-VL-2B-Instruct", clip_model=CLIP_ID), VlmJudge),
])
def test_auto_resolves_by_what_the_deployment_configured(settings, expected):
    assert type(default_registry().resolve("auto", settings)) is expected


def test_the_evaluators_read_their_settings_from_the_environment():
    settings = EvaluatorSettings.from_env({"COMPUTE_EVALUATOR_CLIP_MODEL": CLIP_ID, "COMPUTE_EVALUATOR_CLIP_PROVIDER": "",
                                           "COMPUTE_EVALUATOR_VLM_PROVIDER": "transformers"})
    assert settings == EvaluatorSettings(clip_model=CLIP_ID, vlm_provider_type="transformers")
    registry = default_registry()
    assert type(registry.resolve("clip", settings)) is ClipAlignment  # alignment alone, by name
    assert type(registry.resolve("quality+clip", settings)) is QualityAndAlignment


# --------------------------------------------------------------------------- through the orchestrator


class Harness:
    """An orchestrator with the default registry whose ``quality+clip`` has a scripted quality
    part (its score by attempt, for every prompt) so the combination's arithmetic is known; a
    fake outbox; the images it fetches recorded; a fixed clock, so replays compare equal."""

    def __init__(self, local_scores: list[Any]) -> None:
        self.outbox, self.fetched = FakeOutbox(), []
        registry = default_registry()
        local = PromptScriptedEvaluator({"": local_scores})
        registry.register("quality+clip", lambda s: QualityAndAlignment(s, local=local), model_based=True,
                          available=ClipAlignment.available)
        self.orch = Orchestrator(self.outbox, registry, EvaluatorSettings(clip_model=CLIP_ID), self.fetch,
                                 clock=lambda: T0)

    def fetch(self, url: str) -> Image.Image:
        self.fetched.append(url)
        return Image.new("RGB", (8, 8))

    async def first_attempt(self, prompt: str, provider: str, url: str, **fields: Any) -> tuple[str, Any, Any]:
        """A generation started: (its id, its record, its first attempt's COMPLETED state)."""
        req = request(prompt, evaluation_provider=provider, **fields)
        gid = req.plan.generation_id
        record = await self.orch.on_request(None, req)
        return gid, record, _completed(record.predictions[0].task_id, gid, url)

    def run(self, scenario: Callable[[], Awaitable[T]]) -> T:
        try:
            return asyncio.run(scenario())
        finally:
            self.orch.close()


def test_auto_with_clip_judges_by_task_then_combines_and_a_replay_changes_nothing():
    h = Harness([(0.95, ["crisp"]), 0.9])

    async def scenario() -> Any:
        gid, record, attempt_done = await h.first_attempt("clip: a red dress", "auto", "file:///r/1.png",
                                                          max_attempts=2)
        _, [evaluate] = on_task_final(record, attempt_done, now=record.updated_at)
        assert isinstance(evaluate, Evaluate) and evaluate.provider == "auto"
        waiting = await h.orch.on_task_final(record, attempt_done)
        judge = h.outbox.submitted[-1]
        assert judge.task_id == judge_task_id(attempt_done.task_id) and judge.task_type is TaskType.LLM_INTERACTION
        assert (judge.params.prompt, judge.params.provider_type) == ("clip: a red dress", "clip")
        assert judge.params.provider_config == {"image_urls": ["file:///r/1.png"], "model": CLIP_ID}
        assert h.fetched == []  # nothing scored in-process before the judge answers
        # The attempt's COMPLETED again (a replay): the same judge, not a second one.
        assert await h.orch.on_task_final(waiting, attempt_done) is waiting and len(h.outbox.submitted) == 2
        answer = _judged(judge.task_id, gid, '{"similarity": 0.12, "score": 0.25, "model": "m"}')
        _, [parse] = on_task_final(waiting, answer, now=waiting.updated_at)
        assert isinstance(parse, ParseJudgement) and parse.image_url == "file:///r/1.png"
        scored = await h.orch.on_task_final(waiting, answer)
        # The judge's answer replayed on the record before it (a crash before the write): the
        # same evaluation and the same retry; on the record after: nothing.
        replayed = await h.orch.on_task_final(waiting, answer)
        assert replayed == scored and await h.orch.on_task_final(scored, answer) is scored
        return scored

    record = h.run(scenario)
    first, replay = h.outbox.emitted
    assert first == replay  # same event id, same content: readers drop the duplicate
    assert (first.evaluated_attempt, first.decision, first.evaluator) == (1, EvaluationDecision.RETRY, "quality+clip")
    assert first.score == pytest.approx(math.sqrt(0.95 * 0.25))  # a good image, off-prompt: retried
    assert first.reasons == ["crisp", "off-prompt (alignment 0.25)"]
    assert h.fetched == ["file:///r/1.png"] * 2  # the quality part, once per ParseJudgement
    retries = [t for t in h.outbox.submitted if t.task_type is TaskType.GENERATION][1:]
    assert len({t.task_id for t in retries}) == 1 and record.predictions[0].task_id == retries[0].task_id


def test_a_judge_answer_without_a_score_falls_back_to_the_weight_free_part():
    h = Harness([(0.8, ["a little soft"])])

    async def scenario() -> Any:
        gid, record, attempt_done = await h.first_attempt("garbled: a shot", "quality+clip", "file:///r/g.png",
                                                          max_attempts=1)
        record = await h.orch.on_task_final(record, attempt_done)
        rambling = "a lovely picture, " * 50  # the reason keeps its end however long the answer
        return await h.orch.on_task_final(record, _judged(h.outbox.submitted[-1].task_id, gid, rambling))

    h.run(scenario)
    [event] = h.outbox.emitted
    assert (event.score, event.evaluator, event.decision) == (0.8, "scripted", EvaluationDecision.ACCEPT)
    assert event.reasons[0].startswith("the quality+clip judge gave no score (the clip answer is not JSON")
    assert event.reasons[0].endswith("; scored by scripted") and event.reasons[1:] == ["a little soft"]
    assert h.fetched == ["file:///r/g.png"]


def test_an_attempt_with_no_prompt_is_scored_by_the_quality_part_alone():
    h = Harness([0.9])

    async def scenario() -> Any:
        _, record, attempt_done = await h.first_attempt("no prompt: a shot", "quality+clip", "file:///r/n.png",
                                                        max_attempts=1)
        record, [evaluate] = on_task_final(record, attempt_done, now=record.updated_at)
        # As a BACKGROUND_REMOVE attempt's context has it: no prompt.
        unprompted = dataclasses.replace(evaluate, context=dataclasses.replace(evaluate.context, prompt=None))
        return await h.orch.carry_out(record, [unprompted])

    h.run(scenario)
    [event] = h.outbox.emitted
    assert (event.score, event.evaluator) == (0.9, "scripted") and h.fetched == ["file:///r/n.png"]
    assert all(t.task_type is TaskType.GENERATION for t in h.outbox.submitted)  # no judge task
