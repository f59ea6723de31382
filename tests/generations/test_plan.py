"""Generation requests → plans of tasks; the catalog in memory and in PostgreSQL; submit_plan on
the real broker."""

from __future__ import annotations

import json
import random
import uuid

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from cli.catalog import catalog
from generations.agentic import adjust, attempt_task_id, shot_id_for
from generations.catalog import CatalogError, CatalogKind, InMemoryCatalog, UnknownCatalogEntry
from generations.plan import (
    DETAIL_FOLLOW_UP,
    GenerationPlan,
    clean_prompt,
    continue_after_edit,
    continue_after_prompt,
    plan_generation,
    submit_plan,
)
from generations.requests import GenerateRequest, parse_request
from producers.submit import TaskProducer
from projection.db.catalog import PostgresCatalog
from schemas.codec import EventCodec
from schemas.enums import GenerationStrategy, GenerationType, TaskType
from schemas.events import GenerationTaskSubmitted
from schemas.task_params import GenerationParams
from schemas.topic_admin import ensure_topics
from tests.kafka_helpers import read_topic, record_count


class RecordingProducer:
    """Stands in for TaskProducer: records what would be produced."""

    def __init__(self) -> None:
        self.submitted: list[tuple] = []

    def submit(self, task_type, params, *, orchestration=None, task_id=None) -> str:
        self.submitted.append((task_type, params, orchestration, task_id))
        return task_id


def stocked(store=None):
    store = store or InMemoryCatalog()
    subject = store.add_subject("Anna", "hf:studio/anna-lora", 0.8)
    product = store.add_product("Red Linen Dress", "/loras/red-linen-dress.safetensors", 0.65)
    style = store.add_style("Studio Minimal", "hf:studio/minimal-style", 0.4)
    return store, subject, product, style


def generate(subject, product, style, **extra):
    return {"strategy": "GENERATE", "batch_size": 3, "subject_id": subject.id, "product_id": product.id,
            "style_id": style.id, "shot_type_string": "full-body shot", **extra}


def test_generate_batch_of_three_carries_the_catalog_loras_and_distinct_seeds():
    store, subject, product, style = stocked()
    plan = plan_generation(generate(subject, product, style, seed=41), store, random.Random(7))
    assert len(plan.tasks) == 3 and plan.prompt_step is None
    params = [t.params for t in plan.tasks]
    assert all(isinstance(p, GenerationParams) for p in params)
    assert [(p.subject_lora_weight, p.product_lora_weight, p.style_lora_weight) for p in params] == [(0.8, 0.65, 0.4)] * 3
    assert [p.seed for p in params] == [41, 42, 43]
    assert {p.prompt for p in params} == {"full-body shot of Anna featuring Red Linen Dress, Studio Minimal style"}
    assert [t.orchestration.prediction_index for t in plan.tasks] == [0, 1, 2]
    assert {t.orchestration.generation_id for t in plan.tasks} == {plan.generation_id}
    assert {t.orchestration.strategy for t in plan.tasks} == {GenerationStrategy.GENERATE}
    assert len({t.task_id for t in plan.tasks}) == 3
    assert {k: (e.lora_ref, e.default_weight) for k, e in plan.loras.items()} == {
        "subject": ("hf:studio/anna-lora", 0.8), "product": ("/loras/red-linen-dress.safetensors", 0.65),
        "style": ("hf:studio/minimal-style", 0.4)}
    unseeded = plan_generation(generate(subject, product, style), store, random.Random(7))
    assert len({t.params.seed for t in unseeded.tasks}) == 3


def test_an_entry_without_a_lora_sets_no_weight():
    store, subject, product, style = stocked()
    plain = store.add_style("Natural light", None, None)
    [task] = plan_generation(generate(subject, product, plain, batch_size=1), store).tasks
    assert task.params.style_lora_weight is None and task.params.subject_lora_weight == 0.8
    assert "Natural light style" in task.params.prompt


def test_the_tasks_name_the_catalog_loras_and_retries_keep_them():
    store, subject, product, style = stocked()
    refs = {"subject": "hf:studio/anna-lora", "product": "/loras/red-linen-dress.safetensors",
            "style": "hf:studio/minimal-style"}
    plan = plan_generation(generate(subject, product, style, generation_type="AGENTIC"), store)
    assert [t.params.provider_config for t in plan.tasks] == [{"loras": refs}] * 3
    assert {k: e.lora_ref for k, e in plan.loras.items()} == refs
    # Only entries with a LoRA are named; with none, the task has no provider_config at all.
    plain = store.add_style("Natural light", None, None)
    [task] = plan_generation(generate(subject, product, plain, batch_size=1), store).tasks
    assert task.params.provider_config == {"loras": {k: refs[k] for k in ("subject", "product")}}
    bare = store.add_subject("Mara", None, None)
    [task] = plan_generation({"strategy": "GENERATE", "subject_id": bare.id, "shot_type_string": "portrait"},
                             store).tasks
    assert task.params.provider_config is None and task.params.subject_lora_weight is None
    # A prompt step's waiting tasks and every AGENTIC retry keep the references.
    waiting = plan_generation(generate(subject, product, style, auto_generate_prompt=True), store)
    assert {t.params.provider_config["loras"]["subject"] for t in continue_after_prompt(waiting, "x")} == {refs["subject"]}
    params = plan.tasks[0].params
    for attempt in (2, 3, 4):
        params = adjust(params, attempt, ["blurry (sharpness 0.1)"], 7)
        assert params.provider_config["loras"] == refs
    assert params.provider_config["num_inference_steps"] == 45  # the ladder's own keys are added
    assert params.subject_lora_weight == 0.8


def test_agentic_predictions_are_shots_and_a_custom_prompt_is_kept():
    store, subject, product, style = stocked()
    plan = plan_generation(generate(subject, product, style, generation_type="AGENTIC",
                                    max_attempts=4, min_confidence_score=0.8, evaluation_provider="quality",
                                    generated_prompt="Anna walking on a beach in the red dress"), store)
    for i, task in enumerate(plan.tasks):
        o = task.orchestration
        assert (o.generation_type, o.max_attempts, o.min_confidence_score, o.evaluation_provider) == \
            (GenerationType.AGENTIC, 4, 0.8, "quality")
        assert o.shot_id == shot_id_for(plan.generation_id, i)
        assert task.task_id == attempt_task_id(o.shot_id, 1)
        assert task.params.prompt == "Anna walking on a beach in the red dress"


def test_auto_generated_prompt_runs_an_llm_task_first():
    store, subject, product, style = stocked()
    plan = plan_generation(generate(subject, product, style, auto_generate_prompt=True), store)
    assert plan.tasks == () and plan.prompt_step is not None
    llm = plan.prompt_step.task
    assert llm.task_type is TaskType.LLM_INTERACTION and "Red Linen Dress" in llm.params.prompt
    producer = RecordingProducer()
    handle = submit_plan(plan, producer)
    assert handle.prompt_task_id == llm.task_id and handle.task_ids == ()
    assert [s[0] for s in producer.submitted] == [TaskType.LLM_INTERACTION]
    tasks = continue_after_prompt(plan, '```\nPrompt: "Anna strides through a sunlit loft in the dress"\n```')
    assert [t.params.prompt for t in tasks] == ["Anna strides through a sunlit loft in the dress"] * 3
    assert [t.params.product_lora_weight for t in tasks] == [0.65] * 3
    assert [t.task_id for t in tasks] == [p.task_id for p in plan.prompt_step.waiting]
    fallback = continue_after_prompt(plan, "   ")
    assert fallback[0].params.prompt == plan.prompt_step.fallback_prompt
    # the plan survives a JSON round trip (processors keep it until the prompt arrives)
    again = GenerationPlan.model_validate_json(plan.model_dump_json())
    assert again == plan and continue_after_prompt(again, "x") == continue_after_prompt(plan, "x")


def test_refine_creates_its_refine_record():
    plan = plan_generation({"strategy": "REFINE", "base_image_url": "s3://results/look-1.png", "batch_size": 2,
                            "upscale_enabled": True, "upscale_factor": 2.0, "upscale_denoise": 0.3,
                            "face_detail_enabled": True, "face_detail_steps": 12}, InMemoryCatalog())
    record = plan.refine
    assert record is not None and record.generation_id == plan.generation_id
    assert (record.base_image_url, record.batch_size, record.upscale_factor, record.upscale_denoise,
            record.face_detail_enabled, record.face_detail_steps) == ("s3://results/look-1.png", 2, 2.0, 0.3, True, 12)
    assert record.task_ids == tuple(t.task_id for t in plan.tasks)
    assert {t.task_type for t in plan.tasks} == {TaskType.REFINE}
    assert plan.tasks[0].params.upscale_factor == 2.0
    assert plan.tasks[0].params.provider_config["seed"] != plan.tasks[1].params.provider_config["seed"]


def test_product_enhancement_adds_a_detail_enhancer_follow_up():
    store, subject, product, style = stocked()
    plan = plan_generation({"strategy": "EDITING", "base_img_path": "s3://in/look.png", "tool": "PRODUCT_ENHANCEMENT",
                            "product_id": product.id, "reference_images": ["https://cdn.example.com/dress.png"]}, store)
    [task] = plan.tasks
    assert task.task_type is TaskType.EDITING and "Red Linen Dress" in task.params.prompt
    assert task.params.reference_images[0].type == "reference"
    follow = continue_after_edit(plan, 0, "s3://results/edited.png")
    assert follow.task_type is TaskType.DETAIL_ENHANCER
    assert follow.params.base_image_url == "s3://results/edited.png"
    assert follow.params.strength == DETAIL_FOLLOW_UP["strength"] and follow.orchestration.shot_id is None
    plain = plan_generation({"strategy": "EDITING", "base_img_path": "s3://in/look.png", "tool": "EDIT"}, store)
    assert plain.follow_ups == () and continue_after_edit(plain, 0, "s3://x/y.png") is None


def test_editing_tasks_carry_the_tool_and_the_catalog_entries_for_the_worker():
    store, subject, product, _ = stocked()
    plan = plan_generation({"strategy": "EDITING", "base_img_path": "s3://in/look.png", "tool": "SUBJECT_SWAP",
                            "subject_id": subject.id, "product_id": product.id}, store)
    [task] = plan.tasks
    assert task.params.provider_config == {
        "tool": "SUBJECT_SWAP",
        "subject": {"id": subject.id, "name": "Anna", "lora_ref": "hf:studio/anna-lora", "lora_weight": 0.8},
        "product": {"id": product.id, "name": "Red Linen Dress", "lora_ref": "/loras/red-linen-dress.safetensors",
                    "lora_weight": 0.65}}
    plain = plan_generation({"strategy": "EDITING", "base_img_path": "s3://in/look.png", "tool": "EDIT"}, store)
    assert plain.tasks[0].params.provider_config == {"tool": "EDIT"}
    dress = store.add(CatalogKind.PRODUCT, "Dress", None, None, reference_urls=["s3://catalog/dress-front.png"])
    enhance = plan_generation({"strategy": "EDITING", "base_img_path": "s3://in/look.png", "tool": "PRODUCT_ENHANCEMENT",
                               "product_id": dress.id}, store)
    assert enhance.tasks[0].params.provider_config["product"] == {
        "id": dress.id, "name": "Dress", "lora_ref": None, "lora_weight": None,
        "reference_urls": ["s3://catalog/dress-front.png"]}
    missing = "3f1c2b4a-0000-4000-8000-000000000001"  # an unknown subject: refused before any task exists
    with pytest.raises(UnknownCatalogEntry, match=f"subject {missing}"):
        plan_generation({"strategy": "EDITING", "base_img_path": "s3://in/look.png", "tool": "SUBJECT_SWAP",
                         "subject_id": missing}, store)


@pytest.mark.parametrize("request_, task_type", [
    ({"strategy": "VIDEO", "base_image_url": "https://x.example/a.png", "fps": 24, "duration": 4.0}, TaskType.VIDEO_GENERATION),
    ({"strategy": "BACKGROUND_FIXING", "base_image_url": "https://x.example/a.png", "background_prompt": "beach",
      "mask_expansion": 8}, TaskType.BACKGROUND_FIX),
    ({"strategy": "IMAGE_ADJUSTING", "base_image_url": "https://x.example/a.png", "brightness": 0.1}, TaskType.IMAGE_ADJUSTER),
    ({"strategy": "FACE_FIXING", "base_image_url": "https://x.example/a.png", "strength": 0.4}, TaskType.FACE_ENHANCER),
])
def test_every_other_strategy_makes_its_task(request_, task_type):
    [task] = plan_generation(request_, InMemoryCatalog()).tasks
    assert task.task_type is task_type
    assert {k: getattr(task.params, k) for k in request_ if k not in ("strategy",)} == \
        {k: v for k, v in request_.items() if k != "strategy"}


def test_an_unknown_subject_is_rejected_and_nothing_is_produced():
    store, subject, product, style = stocked()
    missing = str(uuid.uuid4())
    producer = RecordingProducer()
    with pytest.raises(UnknownCatalogEntry, match=f"subject {missing}") as info:
        submit_plan(plan_generation(generate(subject, product, style) | {"subject_id": missing}, store), producer)
    assert info.value.missing == [(CatalogKind.SUBJECT, missing)]
    assert producer.submitted == []


@pytest.mark.parametrize("change, message", [
    ({"subject_id": None, "product_id": None}, "subject_id or product_id is required"),
    ({"generated_prompt": "x", "auto_generate_prompt": True}, "not both"),
    ({"shot_type_string": "  "}, "blank"),
    ({"batch_size": 0}, "greater than or equal to 1"),
    ({"unknown_field": 1}, "Extra inputs"),
])
def test_bad_generate_requests_are_refused(change, message):
    store, subject, product, style = stocked()
    with pytest.raises(ValidationError, match=message):
        plan_generation(generate(subject, product, style) | change, store)


def test_agentic_video_is_refused():
    with pytest.raises(ValidationError, match="BASE only"):
        parse_request({"strategy": "VIDEO", "base_image_url": "https://x.example/a.png", "generation_type": "AGENTIC"})
    assert isinstance(parse_request({"strategy": "GENERATE", "product_id": str(uuid.uuid4()),
                                     "shot_type_string": "x"}), GenerateRequest)


def test_clean_prompt():
    assert clean_prompt('  "A red dress,\n studio light"  ') == "A red dress, studio light"
    assert clean_prompt("Image prompt: a dress") == "a dress"


# --------------------------------------------------------------------------- real services


@pytest.mark.integration
def test_submit_plan_puts_three_generation_tasks_with_orchestration_on_the_topic(kafka_settings):
    ensure_topics(kafka_settings)
    store, subject, product, style = stocked()
    plan = plan_generation(generate(subject, product, style, seed=7, generation_type="AGENTIC"), store)
    with TaskProducer(kafka_settings) as producer:
        handle = submit_plan(plan, producer)
    topic = kafka_settings.topics.task(TaskType.GENERATION)
    codec = EventCodec()
    events = [codec.decode(m.value(), expect=GenerationTaskSubmitted) for m in read_topic(kafka_settings, topic, expect=3)]
    assert record_count(kafka_settings, topic) == 3
    assert sorted(e.envelope.task_id for e in events) == sorted(handle.task_ids) == sorted(t.task_id for t in plan.tasks)
    by_index = sorted(events, key=lambda e: e.orchestration.prediction_index)
    assert [e.params.seed for e in by_index] == [7, 8, 9]
    assert {(e.params.subject_lora_weight, e.params.product_lora_weight, e.params.style_lora_weight)
            for e in events} == {(0.8, 0.65, 0.4)}
    assert [e.orchestration for e in by_index] == [t.orchestration for t in plan.tasks]
    assert {e.orchestration.generation_type for e in events} == {GenerationType.AGENTIC}


@pytest.fixture
def catalog_db(database_url):
    """The read model's migrations own the catalog tables."""
    from projection.db.migrate import migrate

    migrate(database_url)
    return database_url


@pytest.mark.integration
def test_postgres_catalog_stores_resolves_and_lists(catalog_db):
    database_url = catalog_db
    store, subject, product, style = stocked(PostgresCatalog(database_url))
    again = PostgresCatalog(database_url)  # a second client sees the same rows
    assert again.get_subject(subject.id).lora_ref == "hf:studio/anna-lora"
    assert again.get_product(product.id).default_weight == 0.65
    assert again.get_style(style.id).created_at is not None
    assert subject.id in {e.id for e in again.list(CatalogKind.SUBJECT)}
    with pytest.raises(UnknownCatalogEntry):
        again.get_subject(str(uuid.uuid4()))
    with pytest.raises(UnknownCatalogEntry):
        again.get_style("not-a-uuid")
    with pytest.raises(CatalogError, match="already exists"):
        again.add_subject("Anna again", "x", 0.5, entry_id=subject.id)
    with pytest.raises(CatalogError, match="default_weight"):
        again.add_style("too strong", "x", 1.5)
    plan = plan_generation(generate(subject, product, style), again)
    assert {t.params.subject_lora_weight for t in plan.tasks} == {0.8}


@pytest.mark.integration
def test_catalog_cli_adds_and_lists(catalog_db):
    database_url = catalog_db
    runner = CliRunner()
    added = runner.invoke(catalog, ["add-product", "Blue Shirt", "--lora", "hf:x/blue-shirt", "--weight", "0.7",
                                    "--database-url", database_url])
    assert added.exit_code == 0, added.output
    product_id = added.output.strip()
    listed = runner.invoke(catalog, ["list", "--kind", "product", "--json", "--database-url", database_url])
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert {"id": product_id, "kind": "product", "name": "Blue Shirt", "lora_ref": "hf:x/blue-shirt",
            "default_weight": 0.7, "reference_urls": []} == {k: v for k, v in next(r for r in rows if r["id"] == product_id).items()
                                       if k != "created_at"}
    refused = runner.invoke(catalog, ["add-style", "S", "--lora", "x", "--weight", "2", "--database-url", database_url])
    assert refused.exit_code == 2
