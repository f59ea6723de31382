"""Helpers of LLM_INTERACTION's image providers (:mod:`.llm_interaction`): the ``image_urls`` and
``model`` keys of ``provider_config``, fetching the images, and the CLIP alignment score.

Images are fetched through the task's fetcher (``ctx.fetch.fetch_image``, i.e.
:class:`~gpu_consumers.input_scope.TaskInputs`), so they follow exactly the rules of every other
image input: the task's tenant scope (its own tenant's results, and only the configured file
roots and S3 prefixes besides; docs/SECURITY.md, "Tenants and task inputs"), schemes, private
addresses refused, byte and pixel limits, and INVALID_INPUT for anything that does not decode
as an image.

CLIP's score: ``score = clamp((similarity - SIMILARITY_LOW) / (SIMILARITY_HIGH -
SIMILARITY_LOW), 0, 1)`` with the cosine similarity of CLIP ViT-L/14's image and text embeddings,
which for real photos and captions sits in a narrow band: about 0.15 for an unrelated caption,
0.30-0.35 for a caption that describes the image well (the range CLIPScore rescales, Hessel et
al. 2021). The random-weight offline CLIP's similarities are near 0, so its scores are 0: the
numbers are only meaningful with the production model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.base import TaskContext
from gpu_consumers.handlers.model_common import Check
from gpu_consumers.inputs import redact
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import ModelProfile, Role, production_specs

MAX_IMAGES = 4  # a judge looks at one result; a few leave room for a reference or a comparison
MAX_URL_CHARS = 8192  # presigned URLs are long, but not this long
SIMILARITY_LOW = 0.15
SIMILARITY_HIGH = 0.35


def image_urls(low: int = 1, high: int = MAX_IMAGES) -> Check:
    """``provider_config.image_urls``: a list of ``low..high`` URL strings."""
    def check(key: str, value: Any) -> list[str]:
        if (not isinstance(value, list) or not low <= len(value) <= high
                or not all(isinstance(u, str) and 0 < len(u) <= MAX_URL_CHARS for u in value)):
            count = f"exactly {low}" if low == high else f"{low} to {high}"
            raise InvalidInput(f"provider_config.{key} must be a list of {count} image URL(s)")
        return list(value)

    return check


def model_name(key: str, value: Any) -> str:
    """``provider_config.model``: a model id (checked against the role by :func:`check_model`)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"provider_config.{key} must be a model id")
    return value


def check_model(cache: ModelCache, role: Role, requested: str | None) -> str:
    """The id this worker serves for ``role``; INVALID_INPUT when the task asked for another.
    The offline profile also answers to the role's production id, so a deployment's settings
    work unchanged against the tiny models."""
    served = cache.model_id(role)
    accepted = {served}
    if cache.registry.profile is ModelProfile.OFFLINE:
        accepted.add(production_specs()[role].model_id)
    if requested is not None and requested not in accepted:
        raise InvalidInput(f"provider_config.model {requested!r} is not served here: this "
                           f"worker's {role.value} model is {served!r}")
    return served


@dataclass(frozen=True)
class FetchedImage:
    url: str  # redacted: no credentials, no query string
    image: Any  # PIL.Image.Image, RGB

    def describe(self) -> dict[str, Any]:
        """What a result's ``extra["images"]`` records of it."""
        return {"url": self.url, "width": self.image.width, "height": self.image.height}


def fetch_images(ctx: TaskContext, urls: Sequence[str]) -> list[FetchedImage]:
    """Each URL through the task's fetcher (the worker's input rules), as RGB; the cancel token
    is checked after each."""
    images = []
    for url in urls:
        images.append(FetchedImage(redact(url), ctx.fetch.fetch_image(url, mode="RGB")))
        ctx.cancel.raise_if_cancelled()
    return images


@dataclass(frozen=True)
class Alignment:
    similarity: float  # cosine of the image and text embeddings, -1..1
    score: float  # 0..1, see the module doc
    prompt_tokens: int  # the prompt's tokens (start and end tokens included), before truncation
    max_prompt_tokens: int  # CLIP's text window

    @property
    def truncated(self) -> bool:
        return self.prompt_tokens > self.max_prompt_tokens


def alignment_score(similarity: float) -> float:
    return min(1.0, max(0.0, (similarity - SIMILARITY_LOW) / (SIMILARITY_HIGH - SIMILARITY_LOW)))


def clip_alignment(model: Any, processor: Any, prompt: str, image: Any, device: str) -> Alignment:
    """CLIP's image-text similarity of ``prompt`` (truncated to the text window) and ``image``."""
    import torch

    window = int(model.config.text_config.max_position_embeddings)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt", padding=True,
                       truncation=True, max_length=window).to(device, dtype=model.dtype)
    with torch.no_grad():
        out = model(**inputs)
    image_embeds = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
    text_embeds = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
    similarity = float((image_embeds * text_embeds).sum(dim=-1)[0])
    tokens = len(processor.tokenizer(prompt, verbose=False)["input_ids"])  # untruncated
    return Alignment(similarity, alignment_score(similarity), tokens, window)
