"""The generation and catalog resources.

Submitting: one body model per strategy, derived from that strategy's request model in
``generations/plan.py`` (so every field, range and rule is the generation layer's own), with
``strategy`` taken from the route instead of the body and an optional ``webhook_url``.
Reading: :class:`GenerationPublic` (a generation with its predictions, AGENTIC shots and every
attempt), :class:`GenerationsPublic` (a page). Catalog: :class:`CatalogEntryCreate` (in),
:class:`CatalogEntryPublic` (out).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from api.models.pages import DEFAULT_PAGE_SIZE, CreatedOrder, Page, PageNumber, PageSize
from api.models.strict import strict_fields
from api.models.tasks import API_PREFIX, QueryDatetime, TaskOrigin, task_path
from generations.catalog import MAX_REFERENCE_URLS, CatalogEntry, CatalogKind
from generations.requests import (
    BackgroundFixingRequest,
    EditingRequest,
    FaceFixingRequest,
    GenerateRequest,
    ImageAdjustingRequest,
    RefineRequest,
    VideoRequest,
)
from schemas.enums import GenerationStrategy, GenerationType, TaskStatus
from schemas.records import Url, UuidStr, WebhookUrl

S = GenerationStrategy

# Route suffix under /generations and the request model of each strategy.
STRATEGY_ROUTES: dict[GenerationStrategy, tuple[str, type[BaseModel]]] = {
    S.GENERATE: ("", GenerateRequest),
    S.EDITING: ("/edit", EditingRequest),
    S.REFINE: ("/refine", RefineRequest),
    S.VIDEO: ("/video", VideoRequest),
    S.BACKGROUND_FIXING: ("/background-fix", BackgroundFixingRequest),
    S.IMAGE_ADJUSTING: ("/image-adjuster", ImageAdjustingRequest),
    S.FACE_FIXING: ("/face-fixer", FaceFixingRequest),
}


def _no_strategy(cls: type, data: Any) -> Any:
    if isinstance(data, dict) and "strategy" in data:
        raise PydanticCustomError("extra_forbidden",
                                  "strategy is not a body field: the route names the strategy")
    return data


def _body_model(strategy: GenerationStrategy, request_model: type[BaseModel]) -> type[BaseModel]:
    name = request_model.__name__.removesuffix("Request") + "GenerationSubmit"
    return create_model(
        name,
        __base__=request_model,
        __doc__=(f"Start a {strategy.value} generation: the fields of `{request_model.__name__}` "
                 "(docs/GENERATIONS.md) without `strategy`, plus an optional `webhook_url`."),
        __validators__={"no_strategy": model_validator(mode="before")(classmethod(_no_strategy))},
        strategy=(SkipJsonSchema[Literal[strategy]], Field(default=strategy, exclude=True)),  # type: ignore[valid-type]
        **strict_fields(request_model),  # JSON numbers and booleans as they are, no coercion
        webhook_url=(WebhookUrl | None, Field(default=None, description=(
            "Where the generation's webhooks go (http or https)."))),
    )


SUBMIT_MODELS: dict[GenerationStrategy, type[BaseModel]] = {
    s: _body_model(s, model) for s, (_, model) in STRATEGY_ROUTES.items()}


def generation_path(generation_id: str) -> str:
    return f"{API_PREFIX}/generations/{generation_id}"


class GenerationLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    tasks: list[str] = Field(description="the prompt task (if any), then each prediction's tasks")


class GenerationAccepted(BaseModel):
    generation_id: str
    strategy: GenerationStrategy
    generation_type: GenerationType
    task_ids: list[str] = Field(description=(
        "one task per prediction (for AGENTIC: its first attempt). With auto_generate_prompt "
        "they are submitted once the prompt task completed."))
    prompt_task_id: str | None = Field(description="the LLM_INTERACTION task writing the prompt")
    follow_up_task_ids: list[str] = Field(description=(
        "run on a prediction's accepted result (EDITING PRODUCT_ENHANCEMENT)"))
    idempotent_replay: bool = Field(description=(
        "True when the Idempotency-Key named a generation already requested: nothing new was sent."))
    links: GenerationLinks


class GenerationCancel(BaseModel):
    """The optional body of POST /generations/{id}/cancel."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500, description="why; kept in the record's message")


class GenerationCancelAccepted(BaseModel):
    generation_id: str
    status: Literal["CANCEL_REQUESTED"] = Field(default="CANCEL_REQUESTED", description=(
        "the cancel is on the broker; the generation ends CANCELLED (or COMPLETED, when a "
        "prediction had completed) once the processors applied it"))
    links: GenerationLinks


class AttemptPublic(BaseModel):
    attempt: int
    task_id: str
    task_type: str | None
    status: str = Field(description="PENDING until the attempt's task ended, then COMPLETED or FAILED")
    score: float | None = Field(description="the evaluator's score, 0..1")
    reasons: list[str]
    decision: str | None = Field(description="ACCEPT, RETRY, ACCEPT_BEST or GIVE_UP")
    error_code: str | None
    result: dict[str, Any] | None = Field(description="the attempt task's result (COMPLETED)")
    params: dict[str, Any] | None


class ShotPublic(BaseModel):
    shot_id: str
    max_attempts: int
    min_confidence_score: float
    evaluation_provider: str
    done: bool
    decision: str | None = Field(description="the final decision, once the shot is done")
    accepted_task_id: str | None
    accepted_attempt: int | None
    attempts: list[AttemptPublic]


class PredictionErrorPublic(BaseModel):
    code: str | None
    message: str | None


class PredictionPublic(BaseModel):
    index: int
    status: TaskStatus
    task_id: str | None = Field(description="the task whose result is (or will be) the prediction's")
    task_ids: list[str] = Field(description="every task run for the prediction, in order")
    result: dict[str, Any] | None
    error: PredictionErrorPublic | None
    follow_up_task_id: str | None
    shot: ShotPublic | None = Field(description="AGENTIC: the quality loop, every attempt")


class RefinePublic(BaseModel):
    refine_id: str
    task_ids: list[str]
    settings: dict[str, Any]


class GenerationSummary(BaseModel):
    generation_id: str
    strategy: GenerationStrategy
    generation_type: GenerationType
    status: str = Field(description="RUNNING, COMPLETED, FAILED or CANCELLED")
    batch_size: int
    settings: dict[str, Any] = Field(description="the request's fields (strategy inputs, AGENTIC settings)")
    prompt: str | None
    prompt_task_id: str | None
    message: str | None = Field(description="a note, e.g. that the template prompt was used")
    origin: TaskOrigin
    webhook_url: str | None
    version: int = Field(description="grows with every change of the generation's record")
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    links: GenerationLinks

    @classmethod
    def _fields(cls, row: dict[str, Any], task_ids: list[str]) -> dict[str, Any]:
        gid = str(row["generation_id"])
        return dict(
            generation_id=gid, strategy=row["strategy"], generation_type=row["generation_type"],
            status=row["status"], batch_size=row["batch_size"], settings=row["settings"],
            prompt=row["prompt"], prompt_task_id=_text(row["prompt_task_id"]), message=row["message"],
            origin=TaskOrigin.of_row(row),
            webhook_url=row["webhook_url"], version=row["version"], created_at=row["created_at"],
            updated_at=row["updated_at"], completed_at=row["completed_at"],
            links=GenerationLinks(self_=generation_path(gid),
                                  tasks=[task_path(t) for t in task_ids]),
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> GenerationSummary:
        return cls(**cls._fields(row, []))


class GenerationPublic(GenerationSummary):
    predictions: list[PredictionPublic]
    refine: RefinePublic | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> GenerationPublic:
        predictions = [_prediction(p) for p in row["predictions"]]
        task_ids = [*([str(row["prompt_task_id"])] if row["prompt_task_id"] else []),
                    *(t for p in predictions for t in (p.task_ids or ([p.task_id] if p.task_id else [])))]
        refine = row["refines"][0] if row["refines"] else None
        return cls(**cls._fields(row, task_ids), predictions=predictions, refine=None if refine is None else RefinePublic(
            refine_id=str(refine["refine_id"]), task_ids=list(refine["task_ids"]), settings=refine["params"]))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _prediction(p: dict[str, Any]) -> PredictionPublic:
    shot = p["shot"]
    return PredictionPublic(
        index=p["prediction_index"], status=p["status"], task_id=_text(p["task_id"]),
        task_ids=list(p["task_ids"]), result=p["result"],
        error=None if p["error_code"] is None and p["error_message"] is None else PredictionErrorPublic(
            code=p["error_code"], message=p["error_message"]),
        follow_up_task_id=_text(p["follow_up_task_id"]),
        shot=None if shot is None else ShotPublic(
            shot_id=shot["shot_id"], max_attempts=shot["max_attempts"],
            min_confidence_score=shot["min_confidence_score"],
            evaluation_provider=shot["evaluation_provider"], done=shot["done"],
            decision=shot["decision"], accepted_task_id=_text(shot["accepted_task_id"]),
            accepted_attempt=shot["accepted_attempt"],
            attempts=[AttemptPublic(
                attempt=a["attempt"], task_id=str(a["task_id"]), task_type=a["task_type"],
                status=a["status"], score=a["score"], reasons=list(a["reasons"]),
                decision=a["decision"], error_code=a["error_code"], result=a["result"],
                params=a["params"])
                for a in shot["attempts"]]),
    )


class GenerationsPublic(Page[GenerationSummary]):
    total: int = Field(description="generations matching the filters, over all pages")


class GenerationListQuery(BaseModel):
    """Filters and paging of GET /generations (the caller's tenant only); unknown parameters
    are refused."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["RUNNING", "COMPLETED", "FAILED", "CANCELLED"] | None = None
    strategy: GenerationStrategy | None = None
    generation_type: GenerationType | None = None
    created_after: QueryDatetime | None = Field(default=None, description="inclusive")
    created_before: QueryDatetime | None = Field(default=None, description="exclusive")
    page: PageNumber = 1
    page_size: PageSize = DEFAULT_PAGE_SIZE
    sort_order: CreatedOrder = "desc"


# --------------------------------------------------------------------------- catalog


class CatalogKindPath(StrEnum):
    """The catalog collections: /catalog/subjects, /catalog/products, /catalog/styles."""

    subjects = "subjects"
    products = "products"
    styles = "styles"

    @property
    def kind(self) -> CatalogKind:
        return CatalogKind(self.value.removesuffix("s"))


# Some visible character, and no control characters (PostgreSQL text cannot even hold U+0000).
_PRINTABLE = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"


class CatalogEntryCreate(BaseModel):
    """A new subject, product or style. Entries are global (shared by every tenant) and
    immutable through the API."""

    model_config = ConfigDict(extra="forbid")

    id: UuidStr | None = Field(default=None, description="a UUID of your choosing; default: a new one")
    name: str = Field(min_length=1, max_length=200, pattern=_PRINTABLE,
                      description="used in prompts, e.g. 'Anna' or 'Red Linen Dress'")
    lora_ref: str | None = Field(default=None, min_length=1, max_length=500, pattern=_PRINTABLE,
                                 description="the LoRA: a model id or a path the workers' registry knows; "
                                             "null: an entry without a LoRA")
    default_weight: Annotated[float, Strict()] | None = Field(
        default=None, ge=0.0, le=1.0, description="the LoRA weight GENERATE tasks get, 0..1")
    reference_urls: list[Url] = Field(
        default_factory=list, max_length=MAX_REFERENCE_URLS,
        description="reference images of the subject or product; EDITING's SUBJECT_SWAP and "
                    "PRODUCT_ENHANCEMENT use them when a request brings none of that kind")


class CatalogLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")


class CatalogEntryPublic(BaseModel):
    id: str
    kind: CatalogKind
    name: str
    lora_ref: str | None
    default_weight: float | None
    reference_urls: list[str]
    created_at: datetime | None
    links: CatalogLinks

    @classmethod
    def of(cls, entry: CatalogEntry) -> CatalogEntryPublic:
        return cls(id=entry.id, kind=entry.kind, name=entry.name, lora_ref=entry.lora_ref,
                   default_weight=entry.default_weight, reference_urls=list(entry.reference_urls),
                   created_at=entry.created_at,
                   links=CatalogLinks(self_=f"{API_PREFIX}/catalog/{entry.kind.table}/{entry.id}"))


class CatalogEntriesPublic(BaseModel):
    items: list[CatalogEntryPublic]
    total: int
