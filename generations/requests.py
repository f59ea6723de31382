"""Generation requests (seed "Generation Types"): one model per strategy, BASE or AGENTIC.

``parse_request(data)`` picks the model by ``strategy``; the API's generation routes take the
same models (without ``strategy``: the route names it). Turning a request into tasks is
generations/plan.py.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from schemas.enums import GenerationStrategy as S
from schemas.enums import GenerationType
from schemas.records import Url, UuidStr
from schemas.task_params import (
    DURATION_MAX_S,
    FPS_MAX,
    FPS_MIN,
    MASK_EXPANSION_MAX,
    MASK_EXPANSION_MIN,
    MOTION_BUCKET_MAX,
    MOTION_BUCKET_MIN,
    Adjust,
    Dim,
    Prompt,
    ReferenceImage,
    RefineDim,
    Seed,
    Steps,
    Unit,
)

# A batch beyond 64 predictions is a bulk job: submit several generations.
MAX_BATCH = 64
# Beyond 10 attempts the evaluator or the request, not the seed, is the problem.
MAX_ATTEMPTS = 10
PositiveBatch = Annotated[int, Field(ge=1, le=MAX_BATCH)]


class EditingTool(StrEnum):
    EDIT = "EDIT"
    SUBJECT_SWAP = "SUBJECT_SWAP"
    PRODUCT_ENHANCEMENT = "PRODUCT_ENHANCEMENT"


class FrozenModel(BaseModel):
    """Immutable, unknown fields refused: the base of generation requests, plans and records."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerationRequestBase(FrozenModel):
    """What every strategy's request has: BASE or AGENTIC, and the AGENTIC settings."""

    generation_type: GenerationType = GenerationType.BASE
    max_attempts: Annotated[int, Field(ge=1, le=MAX_ATTEMPTS)] = 3
    min_confidence_score: Unit = 0.7
    evaluation_provider: Annotated[str, Field(min_length=1)] = "auto"


class GenerateRequest(GenerationRequestBase):
    # The rules of _inputs, stated for the OpenAPI document (JSON Schema cannot call a validator).
    model_config = ConfigDict(json_schema_extra={
        "anyOf": [{"required": [name], "properties": {name: {"type": "string"}}}
                  for name in ("subject_id", "product_id")],
        "not": {"required": ["auto_generate_prompt", "generated_prompt"],
                "properties": {"auto_generate_prompt": {"const": True},
                               "generated_prompt": {"type": "string", "minLength": 1}}},
    })

    strategy: Literal[S.GENERATE] = S.GENERATE
    batch_size: PositiveBatch = 1
    subject_id: UuidStr | None = None
    product_id: UuidStr | None = None
    style_id: UuidStr | None = None
    shot_type_string: Prompt
    generated_prompt: str | None = None
    auto_generate_prompt: bool = False
    width: Dim | None = None
    height: Dim | None = None
    seed: Seed | None = None

    @model_validator(mode="after")
    def _inputs(self) -> GenerateRequest:
        if self.subject_id is None and self.product_id is None:
            raise ValueError("subject_id or product_id is required: the seed's GENERATE needs at "
                             "least one (Yes*); add a subject with `computectl catalog add-subject "
                             "NAME` (a LoRA is optional)")
        if self.auto_generate_prompt and self.generated_prompt:
            raise ValueError("give generated_prompt or auto_generate_prompt, not both")
        return self


class EditingRequest(GenerationRequestBase):
    strategy: Literal[S.EDITING] = S.EDITING
    base_img_path: Url
    # A bare URL is a reference of type "reference" (the document states both forms).
    reference_images: list[ReferenceImage | Url] = Field(default_factory=list)
    subject_id: UuidStr | None = None
    product_id: UuidStr | None = None
    tool: EditingTool
    width: Dim | None = None
    height: Dim | None = None

    @field_validator("reference_images", mode="after")
    @classmethod
    def _urls(cls, value: list[ReferenceImage | str]) -> list[ReferenceImage]:
        return [ReferenceImage(url=v, type="reference") if isinstance(v, str) else v for v in value]


class RefineSettings(FrozenModel):
    """REFINE's settings: the request's, and the Refine record's."""

    base_image_url: Url
    batch_size: PositiveBatch = 1
    target_width: RefineDim | None = None
    target_height: RefineDim | None = None
    upscale_enabled: bool | None = None
    upscale_factor: Annotated[float, Field(ge=1.0, le=4.0)] | None = None
    upscale_steps: Steps | None = None
    upscale_denoise: Unit | None = None
    face_detail_enabled: bool | None = None
    face_detail_steps: Steps | None = None


class RefineRequest(GenerationRequestBase, RefineSettings):
    strategy: Literal[S.REFINE] = S.REFINE


class VideoRequest(GenerationRequestBase):
    # The rule of _base_only, stated for the OpenAPI document.
    model_config = ConfigDict(json_schema_extra={
        "not": {"required": ["generation_type"], "properties": {"generation_type": {"const": "AGENTIC"}}},
    })

    strategy: Literal[S.VIDEO] = S.VIDEO
    base_image_url: Url
    # The VIDEO_GENERATION task's ranges (its params refuse anything else when planned).
    motion_bucket_id: Annotated[int, Field(ge=MOTION_BUCKET_MIN, le=MOTION_BUCKET_MAX)] | None = None
    fps: Annotated[int, Field(ge=FPS_MIN, le=FPS_MAX)] | None = None
    duration: Annotated[float, Field(gt=0.0, le=DURATION_MAX_S)] | None = None

    @model_validator(mode="after")
    def _base_only(self) -> VideoRequest:
        if self.generation_type is GenerationType.AGENTIC:
            raise ValueError("VIDEO generations are BASE only: the evaluators judge still images")
        return self


class BackgroundFixingRequest(GenerationRequestBase):
    strategy: Literal[S.BACKGROUND_FIXING] = S.BACKGROUND_FIXING
    base_image_url: Url
    background_prompt: str | None = None
    background_image_url: Url | None = None
    mask_expansion: Annotated[int, Field(ge=MASK_EXPANSION_MIN, le=MASK_EXPANSION_MAX)] | None = None


class ImageAdjustingRequest(GenerationRequestBase):
    strategy: Literal[S.IMAGE_ADJUSTING] = S.IMAGE_ADJUSTING
    base_image_url: Url
    brightness: Adjust | None = None
    contrast: Adjust | None = None
    saturation: Adjust | None = None
    prompt: str | None = None


class FaceFixingRequest(GenerationRequestBase):
    strategy: Literal[S.FACE_FIXING] = S.FACE_FIXING
    base_image_url: Url
    strength: Unit | None = None
    prompt: str | None = None


GenerationRequest = Annotated[
    GenerateRequest | EditingRequest | RefineRequest | VideoRequest | BackgroundFixingRequest
    | ImageAdjustingRequest | FaceFixingRequest, Field(discriminator="strategy")]
_REQUEST = TypeAdapter(GenerationRequest)


def parse_request(data: Any) -> GenerationRequest:
    """A request model from a dict (``strategy`` picks the model); raises ValidationError."""
    return _REQUEST.validate_python(data)
