"""The model-based judges on the real broker: the processors app (``python -m processors.cli``)
and a real worker (``computectl worker``, offline tiny models, GENERATION and LLM_INTERACTION),
two AGENTIC generations of one attempt each:

* ``evaluation_provider: "vlm"`` (the processors configured with the VLM role's model id): the
  attempt's image goes to the judge task, the worker's VLM is shown that image, and the
  evaluation is the judge's (or, the random model's answer holding no score, the weight-free
  fallback with its reason);
* ``evaluation_provider: "quality+clip"`` (what ``auto`` picks where only CLIP is configured,
  tests/processors/test_judges.py): one CLIP task for the attempt, and the evaluation combines
  its alignment with the weight-free score of the same image.

What the worker's model was shown is not on the broker (a result carries the answer and the
model's id), so each judge task is run again here, greedy, on the same model folder and the
attempt's file: the same answer (the VLM's text, CLIP's similarity) to the last digit, while the
model's pixel inputs hold that image and another image changes the answer. Assertions are on the
topics (the task records, the status events folded, the evaluations, the generation records),
the result files and that replay; every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from confluent_kafka import Producer
from PIL import Image, ImageOps

from generations.agentic import OrchestratedShot
from generations.catalog import InMemoryCatalog
from generations.flow import _context, judge_task_id
from generations.plan import GenerationRequested, plan_generation
from generations.record import GenerationStatus
from gpu_consumers.handlers.llm_interaction import ClipLlmInteraction, TransformersLlmInteraction
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import ModelProfile, ModelRegistry, Role, production_specs
from gpu_consumers.storage import file_url_path
from processors.evaluators import EvaluatorSettings, QualityEvaluator, UnparseableJudgement, VlmJudge
from schemas.enums import TaskStatus, TaskType
from schemas.events import StatusChanged, TaskSubmitted
from schemas.kafka_settings import KafkaSettings
from state.lifecycle import TaskState, fold_all
from tests.gpu_consumers.handlers.model_support import model_ctx, one_torch_thread  # noqa: F401 (fixture)
from tests.gpu_consumers.handlers.support import Harness
from tests.gpu_consumers.handlers.test_llm_interaction_vision_model import FirstStep
from tests.gpu_consumers.test_worker_e2e import inputs, kafka, model_cache_dir, workers  # noqa: F401 (fixtures)
from tests.processors.test_generations_app import evaluations, latest_records
from tests.processors.test_lifecycle_app import CODEC, App, read_all, wait_for

pytestmark = pytest.mark.integration

CATALOG = InMemoryCatalog()
SUBJECT = CATALOG.add_subject("Mara", None, None)  # no LoRA: the offline worker has none to load
# A worker process imports torch and loads its models on a shared CPU before its first task.
DEADLINE_S = 300.0


def agentic_request(prompt: str, provider: str) -> GenerationRequested:
    plan = plan_generation({"strategy": "GENERATE", "subject_id": SUBJECT.id, "shot_type_string": "full-body shot",
                            "generated_prompt": prompt, "width": 64, "height": 64, "generation_type": "AGENTIC",
                            "evaluation_provider": provider, "max_attempts": 1}, CATALOG, random.Random(prompt))
    return GenerationRequested(plan=plan, requested_at=datetime.now(UTC).isoformat())


def judge_record(kafka: KafkaSettings, judge_id: str) -> TaskSubmitted:
    [task] = [t for m in read_all(kafka, kafka.topics.task(TaskType.LLM_INTERACTION))
              if isinstance(t := CODEC.decode(m.value(), expect=None), TaskSubmitted)
              and t.envelope.task_id == judge_id]
    return task


def final_state(kafka: KafkaSettings, task_id: str) -> TaskState:
    events = [e for m in read_all(kafka, kafka.topics.status)
              if (e := CODEC.decode(m.value(), expect=StatusChanged)).envelope.task_id == task_id]
    state = fold_all(events)
    assert state is not None and state.is_terminal, (task_id, events)
    return state


def result_of(state: TaskState) -> dict[str, Any]:
    result = state.result
    return result.model_dump(mode="json") if hasattr(result, "model_dump") else dict(result or {})


class Replay:
    """Judge tasks run in this process, on the worker's model folder (one torch thread, as the
    worker runs), each on the image given for its URL."""

    def __init__(self, model_cache_dir: Path) -> None:
        self.cache = ModelCache(ModelRegistry(ModelProfile.OFFLINE, model_cache_dir), device="cpu")

    def vlm(self, judge: TaskSubmitted, image: Image.Image) -> tuple[str, torch.Tensor, int]:
        """The answer, the pixel values the model's first step got, and the prompt's tokens."""
        harness = Harness()
        harness.add(judge.params.provider_config["image_urls"][0], image)
        model, _ = self.cache.vlm()
        spy = FirstStep(model)
        try:
            result = TransformersLlmInteraction().run(judge.params, model_ctx(harness, self.cache))
        finally:
            spy.close()
        [pixels] = spy.pixel_values
        return result.text, pixels, result.extra["prompt_tokens"]

    def clip(self, judge: TaskSubmitted, image: Image.Image) -> dict[str, Any]:
        harness = Harness()
        harness.add(judge.params.provider_config["image_urls"][0], image)
        return json.loads(ClipLlmInteraction().run(judge.params, model_ctx(harness, self.cache)).text)


@pytest.mark.timeout(900)
def test_the_judges_see_the_attempts_image_on_the_broker(kafka: KafkaSettings, workers: Any,  # noqa: F811
                                                        model_cache_dir: Path,  # noqa: F811
                                                        results_dir: Path, tmp_path: Path) -> None:
    vlm_id, clip_id = production_specs()[Role.VLM].model_id, production_specs()[Role.CLIP].model_id
    requests = {"vlm": agentic_request("judged: a red linen dress", "vlm"),
                "quality+clip": agentic_request("aligned: a red linen dress", "quality+clip")}
    producer = Producer({**kafka.producer_config(), "enable.idempotence": True})
    for r in requests.values():
        key, value, headers = r.to_record()
        producer.produce(kafka.topics.generations, value, key, headers=headers)
    assert producer.flush(30) == 0

    worker = workers("generation,llm_interaction")
    app = App(kafka, tmp_path, lease_s=1e9)
    # The offline worker answers to the roles' production ids: the deployment's settings as they are.
    app.env.update({"RESULTS_URL": results_dir.resolve().as_uri(), "COMPUTE_EVALUATOR_VLM_MODEL": vlm_id,
                    "COMPUTE_EVALUATOR_CLIP_MODEL": clip_id})
    app.start()
    gids = {name: r.plan.generation_id for name, r in requests.items()}
    try:
        def finished() -> dict[str, Any] | None:
            worker.check_alive()
            records = latest_records(kafka)
            done = all(g in records and records[g].status is not GenerationStatus.RUNNING for g in gids.values())
            return records if done else None

        records = wait_for("both generations finished", finished, app, timeout_s=DEADLINE_S)
    finally:
        code = app.stop()
    assert code == 0, app.tail()
    assert "Traceback" not in app.tail(), app.tail()
    evals = evaluations(kafka)
    replay = Replay(model_cache_dir)

    for name, gid in gids.items():
        record = records[gid]
        assert record.status is GenerationStatus.COMPLETED, (name, record, worker.logs())
        [prediction] = record.predictions
        attempt = prediction.task_ids[0]
        attempt_url = prediction.results[attempt]["result_image_url"]
        attempt_file = file_url_path(attempt_url)
        with Image.open(attempt_file) as opened:
            image = opened.copy()

        # The judge task got the attempt's image...
        judge_id = judge_task_id(attempt)
        judge = judge_record(kafka, judge_id)
        assert judge.params.provider_config["image_urls"] == [attempt_url]
        # ...and completed, on the role's model.
        state = final_state(kafka, judge_id)
        assert state.status is TaskStatus.COMPLETED, (name, state.error_code, state.error_message, worker.logs())
        result = result_of(state)
        role = Role.VLM if name == "vlm" else Role.CLIP
        assert result["metadata"]["model"] == replay.cache.model_id(role)
        other = ImageOps.invert(image.convert("RGB"))
        # The weight-free score the processors computed: the same image, the same context.
        shot = OrchestratedShot.from_dict(prediction.shot)
        context = _context(record, shot, shot.attempts[0])
        quality = QualityEvaluator().evaluate(image, context)
        [event] = evals[gid]
        assert event.evaluated_attempt == 1 and event.envelope.task_id == attempt

        if name == "vlm":
            assert judge.params.provider_config["model"] == vlm_id and judge.params.provider_type is None
            judge_answer = result["result_text"] or ""
            # The worker's VLM was shown this image: greedy on the same model, these pixels give
            # its answer to the last character, and other pixels another answer.
            text, pixels, prompt_tokens = replay.vlm(judge, image)
            assert text == judge_answer
            model, processor = replay.cache.vlm()
            assert torch.equal(pixels, processor.image_processor(images=image.convert("RGB"),
                                                                 return_tensors="pt")["pixel_values"])
            assert prompt_tokens > model.config.image_seq_length  # the image's tokens are in the prompt
            assert replay.vlm(judge, other)[0] != judge_answer
            try:  # the random model's text: a score only by chance
                expected = VlmJudge(EvaluatorSettings(vlm_model=vlm_id)).parse(judge_answer)
            except UnparseableJudgement:
                assert (event.evaluator, event.score) == ("quality", pytest.approx(quality.score))
                assert event.reasons[0].startswith("the vlm judge gave no score (no score in the judge's answer")
                assert event.reasons[0].endswith("; scored by quality")
                assert event.reasons[1:] == list(quality.reasons)
            else:
                assert (event.evaluator, event.score, event.reasons) == ("vlm", expected.score, list(expected.reasons))
        else:
            assert judge.params.provider_type == "clip" and judge.params.provider_config["model"] == clip_id
            assert judge.params.prompt == context.prompt.strip() and "a red linen dress" in context.prompt
            alignment = json.loads(result["result_text"])
            assert alignment["model"] and -1.0 <= alignment["similarity"] <= 1.0
            # CLIP was shown this image: the same similarity here, another for other pixels.
            assert replay.clip(judge, image) == alignment
            assert replay.clip(judge, other)["similarity"] != alignment["similarity"]
            assert event.evaluator == "quality+clip"
            assert event.score == pytest.approx(math.sqrt(quality.score * alignment["score"]))
            off_prompt = [f"off-prompt (alignment {alignment['score']:.2f})"] * (alignment["score"] < 0.5)
            assert event.reasons == [*quality.reasons, *off_prompt]
