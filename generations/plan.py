"""Generations (seed "Generation Types"): a request per strategy (generations/requests.py),
turned into a plan of tasks.

``plan_generation(request, catalog, rng)`` is pure given the catalog. It returns a
:class:`GenerationPlan`: a generation id; one task per prediction (``batch_size`` N → N tasks, each
with its own seed and :class:`Orchestration`); the REFINE :class:`RefineRecord`; the GENERATE
:class:`PromptStep`; the EDITING PRODUCT_ENHANCEMENT follow-up. A bad request or an
unknown catalog id (``UnknownCatalogEntry``) raises before any task exists.

``submit_plan(plan, producer)`` produces the tasks; with a PromptStep only its LLM_INTERACTION task.
**The processors complete the dependency**: on that task's COMPLETED they call
:func:`continue_after_prompt` with its ``result_text`` and submit what it returns (``submit_tasks``);
a follow-up likewise with :func:`continue_after_edit`. Ids are uuid5 of the generation id, so a
replayed continuation resubmits the same tasks. See docs/GENERATIONS.md.
"""

from __future__ import annotations

import random
import re
import uuid
from typing import Any, Protocol, cast

from pydantic import Field, JsonValue, SerializeAsAny, model_validator

from generations.agentic import attempt_task_id, shot_id_for
from generations.catalog import Catalog, CatalogEntry, CatalogKind, UnknownCatalogEntry
from generations.requests import (
    EditingRequest,
    EditingTool,
    FrozenModel,
    GenerateRequest,
    GenerationRequest,
    GenerationRequestBase,
    RefineRequest,
    RefineSettings,
    parse_request,
)
from schemas.enums import GenerationStrategy as S
from schemas.enums import GenerationType, TaskType
from schemas.events import Orchestration
from schemas.headers import json_record_headers
from schemas.task_params import PARAMS_MODELS, SEED_MAX, LlmInteractionParams, ReferenceImage, TaskParams

# Fixed namespace of generation-derived ids; changing it would break replayed continuations.
_NS = uuid.UUID("9a3e55c1-0f7b-4c2e-b6d8-41f2a7c3e905")

TASK_TYPE = {S.GENERATE: TaskType.GENERATION, S.EDITING: TaskType.EDITING, S.REFINE: TaskType.REFINE,
             S.VIDEO: TaskType.VIDEO_GENERATION, S.BACKGROUND_FIXING: TaskType.BACKGROUND_FIX,
             S.IMAGE_ADJUSTING: TaskType.IMAGE_ADJUSTER, S.FACE_FIXING: TaskType.FACE_ENHANCER}

# auto_generate_prompt: what the LLM_INTERACTION task is asked.
PROMPT_SYSTEM = ("You write prompts for a text-to-image model that makes commercial fashion "
                 "photographs. Answer with the prompt only: one paragraph, no quotes, no preamble.")
PROMPT_REQUEST = ("Write the image prompt for this shot: {brief}. Keep the product's look exact; "
                  "describe pose, framing, lighting and background.")
PROMPT_MAX_TOKENS, PROMPT_TEMPERATURE = 200, 0.7  # one paragraph; some variety between shots
EDIT_PROMPTS = {"EDIT": "composite the reference images naturally into the scene{product}{subject}",
                "SUBJECT_SWAP": "replace the person with {who}; keep pose, garment, lighting and background",
                "PRODUCT_ENHANCEMENT": "enhance {what}: accurate colour, crisp texture and clean edges, "
                                       "everything else unchanged"}
# PRODUCT_ENHANCEMENT's DETAIL_ENHANCER follow-up: light (0.3) so the edit itself is kept.
DETAIL_FOLLOW_UP = {"strength": 0.3, "prompt": "fine product detail, crisp texture, clean edges",
                    "preserve_original": True}


class PlannedTask(FrozenModel):
    """One task to submit: ``producer.submit(task_type, params, task_id=, orchestration=)``."""

    task_id: str
    task_type: TaskType
    params: SerializeAsAny[TaskParams]
    orchestration: Orchestration | None = None

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("params"), dict):
            data = {**data, "params": PARAMS_MODELS[TaskType(data["task_type"])].model_validate(data["params"])}
        return data


class PendingTask(FrozenModel):
    """A task whose parameters wait for another task's output (``template`` lacks that field)."""

    task_id: str
    task_type: TaskType
    template: dict[str, JsonValue]
    orchestration: Orchestration | None = None

    def complete(self, **values: Any) -> PlannedTask:
        params = PARAMS_MODELS[self.task_type].model_validate({**self.template, **values})
        return PlannedTask(task_id=self.task_id, task_type=self.task_type, params=params,
                           orchestration=self.orchestration)


class PromptStep(FrozenModel):
    """GENERATE with ``auto_generate_prompt``: ``task`` (LLM_INTERACTION) writes the prompt of the
    ``waiting`` GENERATION tasks; an empty answer falls back to ``fallback_prompt``."""

    task: PlannedTask
    fallback_prompt: str
    waiting: tuple[PendingTask, ...]


class RefineRecord(RefineSettings):
    """The seed's Refine record: a REFINE generation's settings and its tasks."""

    refine_id: str
    generation_id: str
    task_ids: tuple[str, ...] = ()


class GenerationPlan(FrozenModel):
    generation_id: str
    request: GenerationRequest
    tasks: tuple[PlannedTask, ...] = ()  # empty while a PromptStep is pending
    prompt_step: PromptStep | None = None
    # Run on a prediction's accepted result (``base_image_url``); orchestration names which.
    follow_ups: tuple[PendingTask, ...] = ()
    refine: RefineRecord | None = None
    # Worker adapter name ("subject", "product", "style") → the catalog entry whose LoRA it is.
    loras: dict[str, CatalogEntry] = Field(default_factory=dict)
    prompt: str | None = None  # GENERATE: the prompt built from the template or given


def _id(generation_id: str, what: str) -> str:
    return str(uuid.uuid5(_NS, f"{generation_id}/{what}"))


def _resolve(catalog: Catalog, request: Any) -> dict[CatalogKind, CatalogEntry]:
    """The request's subject, product and style; every unknown id named in one error."""
    found, missing = {}, []
    for kind in CatalogKind:
        entry_id = getattr(request, f"{kind.value}_id", None)
        try:
            if entry_id is not None:
                found[kind] = catalog.get(kind, entry_id)
        except UnknownCatalogEntry as exc:
            missing += exc.missing
    if missing:
        raise UnknownCatalogEntry(missing)
    return found


def build_prompt(shot_type: str, entries: dict[CatalogKind, CatalogEntry]) -> str:
    """``<shot type> of <subject> featuring <product>, <style> style`` (parts only when given)."""
    subject, product, style = (entries.get(k) for k in CatalogKind)
    return (shot_type.strip() + (f" of {subject.name}" if subject else "")
            + (f" featuring {product.name}" if product else "") + (f", {style.name} style" if style else ""))


def plan_generation(request: GenerationRequest | dict[str, Any], catalog: Catalog,
                    rng: random.Random | None = None) -> GenerationPlan:
    """The plan of a generation (see the module doc). Raises pydantic's ValidationError for a bad
    request or a value its task type rejects, UnknownCatalogEntry for an unknown catalog id."""
    request = parse_request(request) if isinstance(request, dict) else request
    rng = rng or random.Random()
    generation_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    entries = _resolve(catalog, request)
    n = getattr(request, "batch_size", 1)
    agentic = request.generation_type is GenerationType.AGENTIC

    def orchestration(i: int) -> Orchestration:
        return Orchestration(generation_id=generation_id, prediction_index=i,
                             generation_type=request.generation_type, strategy=request.strategy,
                             shot_id=shot_id_for(generation_id, i) if agentic else None,
                             max_attempts=request.max_attempts,
                             min_confidence_score=request.min_confidence_score,
                             evaluation_provider=request.evaluation_provider)

    def task_id(i: int) -> str:
        return attempt_task_id(shot_id_for(generation_id, i), 1) if agentic else _id(generation_id, f"prediction/{i}")

    templates = [_template(request, entries, i, rng) for i in range(n)]
    task_type = TASK_TYPE[request.strategy]
    extra: dict[str, Any] = {}
    if isinstance(request, GenerateRequest):
        prompt = request.generated_prompt or build_prompt(request.shot_type_string, entries)
        extra["prompt"] = prompt
        extra["loras"] = {kind.value: entry for kind, entry in entries.items() if entry.lora_ref}
        if request.auto_generate_prompt:
            llm = LlmInteractionParams(prompt=PROMPT_REQUEST.format(brief=prompt), system_prompt=PROMPT_SYSTEM,
                                       max_tokens=PROMPT_MAX_TOKENS, temperature=PROMPT_TEMPERATURE)
            waiting = tuple(PendingTask(task_id=task_id(i), task_type=task_type, template=t,
                                        orchestration=orchestration(i)) for i, t in enumerate(templates))
            step = PromptStep(task=PlannedTask(task_id=_id(generation_id, "prompt"), task_type=TaskType.LLM_INTERACTION,
                                               params=llm), fallback_prompt=prompt, waiting=waiting)
            return GenerationPlan(generation_id=generation_id, request=request, prompt_step=step, **extra)
        templates = [{**t, "prompt": prompt} for t in templates]
    tasks = tuple(PendingTask(task_id=task_id(i), task_type=task_type, template=t,
                              orchestration=orchestration(i)).complete() for i, t in enumerate(templates))
    if isinstance(request, RefineRequest):
        settings = request.model_dump(include=set(RefineSettings.model_fields))
        extra["refine"] = RefineRecord(refine_id=_id(generation_id, "refine"), generation_id=generation_id,
                                       task_ids=tuple(t.task_id for t in tasks), **settings)
    if isinstance(request, EditingRequest) and request.tool is EditingTool.PRODUCT_ENHANCEMENT:
        # No shot_id: a follow-up is part of its prediction, never an attempt of the shot.
        extra["follow_ups"] = tuple(PendingTask(
            task_id=_id(generation_id, f"detail/{i}"), task_type=TaskType.DETAIL_ENHANCER,
            template=dict[str, Any](DETAIL_FOLLOW_UP), orchestration=orchestration(i).model_copy(update={"shot_id": None}))
            for i in range(n))
    return GenerationPlan(generation_id=generation_id, request=request, tasks=tasks, **extra)


def _template(request: Any, entries: dict[CatalogKind, CatalogEntry], i: int, rng: random.Random) -> dict[str, Any]:
    """Prediction ``i``'s task parameters as a JSON dict (GENERATE: without its prompt)."""
    if isinstance(request, GenerateRequest):
        seed = (request.seed + i) & SEED_MAX if request.seed is not None else rng.randint(0, SEED_MAX)
        weights = {f"{kind.value}_lora_weight": e.default_weight for kind, e in entries.items() if e.lora_ref}
        # Which LoRA each weighted slot applies: the worker resolves these references
        # (gpu_consumers/handlers/generation.py); without them it would use its configured ones.
        refs = {kind.value: e.lora_ref for kind, e in entries.items() if e.lora_ref}
        return _some(width=request.width, height=request.height, seed=seed, **weights,
                     provider_config={"loras": refs} if refs else None)
    if isinstance(request, EditingRequest):
        subject, product = entries.get(CatalogKind.SUBJECT), entries.get(CatalogKind.PRODUCT)
        prompt = EDIT_PROMPTS[request.tool.value].format(
            product=f"; the product is {product.name}" if product else "",
            subject=f"; the subject is {subject.name}" if subject else "",
            who=subject.name if subject else "the person in the reference images",
            what=product.name if product else "the product")
        # What the worker's tool uses (gpu_consumers/handlers/editing_tools.py): the tool and the catalog
        # entries as resolved now, so the task is self-contained (a replay runs the same LoRA).
        config: dict[str, Any] = {"tool": request.tool.value}
        for slot, e in (("subject", subject), ("product", product)):
            if e is not None:
                config[slot] = {"id": e.id, "name": e.name, "lora_ref": e.lora_ref, "lora_weight": e.default_weight,
                                **({"reference_urls": list(e.reference_urls)} if e.reference_urls else {})}
        return _some(base_image_url=request.base_img_path, prompt=prompt, width=request.width, height=request.height,
                     reference_images=[cast(ReferenceImage, r).model_dump() for r in request.reference_images],  # made by _urls
                     provider_config=config)
    if isinstance(request, RefineRequest):  # its own seed per variation (provider_config.seed)
        fields = request.model_dump(exclude=set(GenerationRequestBase.model_fields) | {"strategy", "batch_size"})
        return _some(**fields, provider_config={"seed": rng.randint(0, SEED_MAX)})
    return _some(**request.model_dump(exclude=set(GenerationRequestBase.model_fields) | {"strategy"}))


def _some(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}



_FENCE = re.compile(r"^```\w*\s*|\s*```$")
_LABEL = re.compile(r"^\s*(?:image\s+)?prompt\s*:\s*", re.IGNORECASE)


def clean_prompt(text: str) -> str:
    """The LLM's answer as a prompt: no code fence, no "Prompt:" label, no quotes, one line."""
    text = _LABEL.sub("", _FENCE.sub("", text.strip()))
    return " ".join(text.strip().strip("\"'“”").split())


def continue_after_prompt(plan: GenerationPlan, llm_result_text: str | None) -> list[PlannedTask]:
    """The GENERATION tasks of a plan whose prompt task completed with ``llm_result_text``."""
    if plan.prompt_step is None:
        raise ValueError(f"generation {plan.generation_id} has no prompt step")
    prompt = clean_prompt(llm_result_text or "") or plan.prompt_step.fallback_prompt
    return [pending.complete(prompt=prompt) for pending in plan.prompt_step.waiting]


def continue_after_edit(plan: GenerationPlan, prediction_index: int, result_image_url: str) -> PlannedTask | None:
    """The follow-up task of prediction ``prediction_index`` on its accepted result, if any."""
    step = next((f for f in plan.follow_ups if cast(Orchestration, f.orchestration).prediction_index == prediction_index), None)
    return step.complete(base_image_url=result_image_url) if step else None



class TaskSubmitter(Protocol):
    def submit(self, task_type: TaskType, params: Any, *, orchestration: Orchestration | None = ...,
               task_id: str | None = ...) -> str: ...


class SubmittedPlan(FrozenModel):
    """What :func:`submit_plan` produced; ``prompt_task_id`` set: the GENERATION tasks follow
    when the processors see that task COMPLETED."""

    generation_id: str
    task_ids: tuple[str, ...]
    prompt_task_id: str | None = None


def submit_tasks(tasks: list[PlannedTask] | tuple[PlannedTask, ...], producer: TaskSubmitter) -> list[str]:
    return [producer.submit(t.task_type, t.params, orchestration=t.orchestration, task_id=t.task_id)
            for t in tasks]


def submit_plan(plan: GenerationPlan, producer: TaskSubmitter) -> SubmittedPlan:
    """Produce the plan's tasks (or its prompt task); flushing is the caller's."""
    if plan.prompt_step is not None:
        [prompt_id] = submit_tasks([plan.prompt_step.task], producer)
        return SubmittedPlan(generation_id=plan.generation_id, task_ids=(), prompt_task_id=prompt_id)
    return SubmittedPlan(generation_id=plan.generation_id, task_ids=tuple(submit_tasks(plan.tasks, producer)))


# --------------------------------------------------------------------------- the request record

# The record a generation request travels as on the generations topic (keyed by generation id):
# the processors' orchestrator starts the generation from it and submits its tasks. JSON, like
# the state documents: it is internal to this system, and the plan is already a pydantic model.
GENERATION_REQUEST_FORMAT = 1
GENERATION_REQUEST_CONTENT_TYPE = b"application/json; format=compute.GenerationRequested/1"


class GenerationRequested(FrozenModel):
    """A generation to start: its plan and who asked for it."""

    format: int = GENERATION_REQUEST_FORMAT
    plan: GenerationPlan
    requested_at: str  # ISO 8601, UTC
    origin_instance: str | None = None
    origin_zone: str | None = None
    origin_tenant_id: str | None = None
    webhook_url: str | None = None

    def to_record(self) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """``(key, value, headers)`` for the generations topic."""
        return _generations_record(self, self.plan.generation_id, "requested", GENERATION_REQUEST_CONTENT_TYPE)


# The record asking for a generation to be cancelled (same topic, same key). The orchestrator
# cancels every prediction not yet ended and asks the workers to stop the tasks still running.
GENERATION_CANCEL_FORMAT = 1
GENERATION_CANCEL_CONTENT_TYPE = b"application/json; format=compute.GenerationCancelRequested/1"


class GenerationCancelRequested(FrozenModel):
    """A generation to cancel: which one, why and who asked."""

    format: int = GENERATION_CANCEL_FORMAT
    generation_id: str
    requested_at: str  # ISO 8601, UTC
    reason: str | None = None
    requested_by: str | None = None

    def to_record(self) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
        """``(key, value, headers)`` for the generations topic."""
        return _generations_record(self, self.generation_id, "cancel-requested", GENERATION_CANCEL_CONTENT_TYPE)


def _generations_record(record: FrozenModel, gid: str, what: str, content_type: bytes
                        ) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A JSON record of the generations topic: keyed by generation id, CloudEvents headers."""
    headers = json_record_headers(event_id=f"{gid}/{what}", source="producers",
                                  ce_type=f"compute.generations.{type(record).__name__}", subject=gid,
                                  content_type=content_type)
    return gid.encode(), record.model_dump_json().encode(), headers
