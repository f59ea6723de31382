"""The parameters of each task type: exactly the seed tables (``Compute Server Tasks``).

One model per task type, mirroring the ``<Type>Params`` record inside
``schemas/avro/compute.events.<Type>TaskSubmitted.avsc``: same names, same order, same defaults.
Every type also takes ``provider_type`` and ``provider_config`` (the seed lists them for
GENERATION; the others get them appended). The models enforce the ranges below; a violation
raises pydantic's ValidationError naming the field and the rule.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, StringConstraints, WithJsonSchema, model_validator

from schemas.enums import TaskType
from schemas.records import AVRO_NAMESPACE, NON_BLANK, AvroRecord, JsonObject, Url

# --------------------------------------------------------------------------- bounds

# LoRA weights, strengths, denoise and blend values: the seed documents them as 0..1.
UNIT_MIN, UNIT_MAX = 0.0, 1.0
# Colour adjustments are signed offsets around "unchanged" (0); the seed says -1..1.
ADJUST_MIN, ADJUST_MAX = -1.0, 1.0
# Below 64 px the 8x-downsampled latents of diffusion models are too small to be useful.
DIM_MIN = 64
# 4096 px per side: the largest frame a single-GPU generation handles.
DIM_MAX = 4096
# 4096 x 4096; guards memory when both sides are large.
MAX_PIXELS = 16_777_216
# REFINE upscales existing images, so it may go to twice the generation size per side.
REFINE_DIM_MAX = 8192
# 8192 x 8192.
REFINE_MAX_PIXELS = 67_108_864
# Denoising steps: at least one; beyond 150 no sampler improves and a task can hog a GPU.
STEPS_MIN, STEPS_MAX = 1, 150
# Upscale multiplier: the seed says 1-4.
UPSCALE_FACTOR_MIN, UPSCALE_FACTOR_MAX = 1.0, 4.0
# Stable Video Diffusion's motion bucket id conditions on a byte-sized value; the seed says 1-255.
MOTION_BUCKET_MIN, MOTION_BUCKET_MAX = 1, 255
# Video frame rate: 120 fps covers slow-motion output; 0 fps is no video.
FPS_MIN, FPS_MAX = 1, 120
# Video duration in seconds: image-to-video models make short clips; a minute is the ceiling.
DURATION_MAX_S = 60.0
# Mask edge expansion in pixels: a quarter of the largest side is plenty.
MASK_EXPANSION_MIN, MASK_EXPANSION_MAX = 0, 1024
# Seeds are Avro longs (signed 64-bit) and never negative.
SEED_MIN, SEED_MAX = 0, 2**63 - 1
# LLM output budget: at least one token; 32k is the largest context our text models take.
MAX_TOKENS_MIN, MAX_TOKENS_MAX = 1, 32_768
# Sampling temperature: the seed says 0-2 (the usual range of LLM APIs).
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.0, 2.0

Unit = Annotated[float, Field(ge=UNIT_MIN, le=UNIT_MAX)]
Adjust = Annotated[float, Field(ge=ADJUST_MIN, le=ADJUST_MAX)]
Dim = Annotated[int, Field(ge=DIM_MIN, le=DIM_MAX)]
RefineDim = Annotated[int, Field(ge=DIM_MIN, le=REFINE_DIM_MAX)]
Steps = Annotated[int, Field(ge=STEPS_MIN, le=STEPS_MAX)]
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank (only whitespace)")
    return value


Prompt = Annotated[str, StringConstraints(min_length=1), AfterValidator(_not_blank),
                   WithJsonSchema({"type": "string", "minLength": 1, "pattern": NON_BLANK})]
"""A required prompt: at least one non-blank character."""


def _json_safe(value: dict[str, Any]) -> dict[str, Any]:
    """Refuse what JSON text cannot carry: NaN and the infinities (``1e400`` parses as one),
    which the Avro ``json`` field would write as bare ``NaN``/``Infinity`` that no JSON reader
    (the projector's PostgreSQL included) accepts; and text no UTF-8 writer can encode (lone
    surrogates such as ``"\\udfff"``) or PostgreSQL can store (U+0000)."""
    where = _unsafe_json(value, "")
    if where is not None:
        raise ValueError(where)
    return value


def _unsafe_json(value: object, path: str) -> str | None:
    """What makes ``value`` unsafe and where (``path``), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path or 'value'}: must be a finite number (got {value})"
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path or 'value'}: must not contain U+0000 (NUL)"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"{path or 'value'}: must be valid Unicode text (it holds a lone surrogate)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unsafe_json(key, path) or _unsafe_json(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _unsafe_json(item, f"{path}[{i}]")
            if found:
                return found
    return None


ProviderConfig = Annotated[JsonObject, AfterValidator(_json_safe)]
"""Provider-specific settings: any JSON object that JSON text, UTF-8 and PostgreSQL can hold."""


def check_pixels(width: int | None, height: int | None, max_pixels: int, names: str) -> None:
    """Raise ValueError when both sides are set and their product exceeds ``max_pixels``."""
    if width is not None and height is not None and width * height > max_pixels:
        raise ValueError(
            f"{names} = {width} * {height} = {width * height:,} pixels exceeds the maximum of {max_pixels:,}"
        )


class TaskParams(AvroRecord):
    """Base of the ten parameter models."""

    task_type: ClassVar[TaskType]


class GenerationParams(TaskParams):
    task_type: ClassVar[TaskType] = TaskType.GENERATION
    avro_name: ClassVar[str] = f"{AVRO_NAMESPACE}.GenerationParams"

    prompt: Prompt
    width: Dim = 1024
    height: Dim = 1024
    seed: Seed | None = None
    subject_lora_weight: Unit | None = None
    product_lora_weight: Unit | None = None
    style_lora_weight: Unit | None = None
    product2_lora_weight: Unit | None = None
    reference_image_url: Url | None = None
    reference_image_strength: Unit | None = None
    provider_type: str | None = None
    provider_config: ProviderConfig | None = None

    @model_validator(mode="after")
    def _pixels(self) -> GenerationParams:
        check_pixels(self.width, self.height, MAX_PIXELS, "width * height")
        return self


class ReferenceImage(AvroRecord):
    """An input image guiding a task; ``type`` is its role (garment, product, subject, ...)."""

    avro_name: ClassVar[str] = f"{AVRO_NAMESPACE}.ReferenceImage"

    url: Url
    type: Annotated[str, StringConstraints(min_length=1)]


class EditingParams(TaskParams):
    task_type: ClassVar[TaskType] = TaskType.EDITING
    avro_name: ClassVar[str] = f"{AVRO_NAMESPACE}.EditingParams"

    base_image_url: Url
    reference_images: list[ReferenceImage] = Field(default_factory=list)
    prompt: str | None = None
    mask_url: Url | None = None
    strength: Unit | None = None
    width: Dim | None = None
    height: Dim | None = None
    provider_type: str | None = None
    provider_config: ProviderConfig | None = None

    @model_validator(mode="after")
    def _pixels(self) -> EditingParams:
        check_pixels(self.width, self.height, MAX_PIXELS, "width * height")
        return self


class RefineParams(TaskParams):
    task_type: ClassVar[TaskType] = TaskType.REFINE
    avro_name: ClassVar[str] = f"{AVRO_NAMESPACE}.RefineParams"

    base_image_url: Url
    target_width: RefineDim | None = None
    target_height: RefineDim | None = None
    upscale_enabled: bool | None = None
    upscale_factor: Annotated[float, Field(ge=UPSCALE_FACTOR_MIN, le=UPSCALE_FACTOR_MAX)] | None = None
    upscale_steps: Steps | None = None
    upscale_denoise: Unit | None = None
    upscale_prompt: str | None = None
    face_detail_enabled: bool | None = None
    face_detail_steps: Steps | None = None
    face_detail_denoise: Unit | None = None
    face_detail_prompt: str | None = None
    provider_type: str | None = None
    provider_config: ProviderConfig | None = None

    @model_validator(mode="after")
    def _pixels(self) -> RefineParams:
        check_pixels(self.target_width, self.target_height, REFINE_MAX_PIXELS, "target_width * target_height")
        return self


class VideoGenerationParams(TaskParams):
    task_type: ClassVar[TaskType] = TaskType.VIDEO_GENERATION
    avro_name: ClassVar[str] = f"{AVRO_NAMESPACE}.VideoGenerationParams"

    base_image_url: Url
    motion_bucket_id: Annotated[int, Field(ge=MOTION_BUCKET_MIN, le=MOTION_BUCKET_MAX)] | None = None
    fps: Annotated[int, Field(ge=FPS_MIN, le=FPS_MAX)] | None = None
    duration: Annotated[float, Field(gt=0.0, le=DURATION_MAX_S)] | None = None
    seed: Seed | None = None
    provider_type: str | None = None
    provider_config: ProviderConfig | None = None


class BackgroundFixParams(TaskParams):
    task_type: ClassVar[TaskType] = TaskType.BACKGROUND_FIX
    avro_name: ClassVar[str] = f"{AVRO_NAMESPACE}.BackgroundFixParams"

    base_image_url: Url
    background_prompt: str | None = None
    background_image_url: Url | None = None
    mask_expansion: Annotated[int, Field(ge=MASK_EXPANSION_MIN, le=MASK_EXPANSION_MAX)] | None = None
    blend_strength: Unit | None = None
    provider_type: str | None = None
    provider_config: ProviderConfig | None = None


class FaceEnhancerParams(TaskParams):
    task_type: ClassVar[TaskType] = TaskType.FACE_ENHANCER
    avro_name: ClassVar[str] = f"{AVRO_NAMESPACE}.FaceEnhancerParams"

    base_image_url: Url
    strength: Unit | None = None
    prompt: str | None = None
    preserve_identity: bool | None = None
    provider_type: str | None = None
    provider_config: ProviderConfig | None = None


class ImageAdjusterParams(TaskParams):
    task_type: ClassVar[TaskType] = TaskType.IMAGE_ADJUSTER
    avro_name: ClassVar[str] = f"{AVRO_NAMESPACE}.ImageAdjusterParams"

    base_image_url: Url
    brightness: Adjust | None = None
    contrast: Adjust | None = None
    saturation: Adjust | None = None
    warmth: Adjust | None = None
    prompt: str | None = None
    provider_type: str | None = None
    provider_config: ProviderConfig | None = None


class DetailEnhancerParams(TaskParams):
    task_type: ClassVar[TaskType] = TaskType.DETAIL_ENHANCER
    avro_name: ClassVar[str] = f"{AVRO_NAMESPACE}.DetailEnhancerParams"

    base_image_url: Url
    strength: Unit | None = None
    prompt: str | None = None
    preserve_original: bool | None = None
    provider_type: str | None = None
    provider_config: ProviderConfig | None = None


class BackgroundRemoveParams(TaskParams):
    task_type: ClassVar[TaskType] = TaskType.BACKGROUND_REMOVE
    avro_name: ClassVar[str] = f"{AVRO_NAMESPACE}.BackgroundRemoveParams"

    image_url: Url
    # A string in Avro (new formats need no schema change); the contract allows these two.
    # None means png (the seed: "outputs transparent PNG").
    output_format: Literal["png", "webp"] | None = None
    provider_type: str | None = None
    provider_config: ProviderConfig | None = None


class LlmInteractionParams(TaskParams):
    task_type: ClassVar[TaskType] = TaskType.LLM_INTERACTION
    avro_name: ClassVar[str] = f"{AVRO_NAMESPACE}.LlmInteractionParams"

    prompt: Prompt
    system_prompt: str | None = None
    max_tokens: Annotated[int, Field(ge=MAX_TOKENS_MIN, le=MAX_TOKENS_MAX)] | None = None
    temperature: Annotated[float, Field(ge=TEMPERATURE_MIN, le=TEMPERATURE_MAX)] | None = None
    provider_type: str | None = None
    provider_config: ProviderConfig | None = None


PARAMS_MODELS: dict[TaskType, type[TaskParams]] = {
    model.task_type: model
    for model in (
        GenerationParams,
        EditingParams,
        RefineParams,
        VideoGenerationParams,
        BackgroundFixParams,
        FaceEnhancerParams,
        ImageAdjusterParams,
        DetailEnhancerParams,
        BackgroundRemoveParams,
        LlmInteractionParams,
    )
}
"""Every task type's parameter model."""
