"""EDITING's tools (seed "Generation Types": EDIT, SUBJECT_SWAP, PRODUCT_ENHANCEMENT): which
catalog entry's LoRA a tool applies, which reference guides it, where it repaints.

The EDITING task's seed parameters have no tool and no catalog ids: the generation planner
(``generations/plan.py``) resolves the request's ``subject_id`` / ``product_id`` in the catalog
when the generation is submitted (an unknown id is refused there, before any task exists) and
puts what the worker needs in ``provider_config``:

* ``tool``: ``EDIT`` (default), ``SUBJECT_SWAP`` or ``PRODUCT_ENHANCEMENT``;
* ``subject`` / ``product``: the catalog entry, ``{"id", "name", "lora_ref", "lora_weight",
  "reference_urls"}`` (``name`` required; ``lora_ref`` a LoRA reference the worker resolves like
  GENERATION's, ``lora_weight`` 0..1, None meaning 1.0, the adapter at its trained strength;
  ``reference_urls`` the entry's reference images, used when the request brings none of the
  tool's kind).

The task stays self-contained (a replay runs the same entry even if the catalog changed since),
and the worker needs no database. This module is pure (numpy / OpenCV), so it is tested without
models; the handler (``editing.py``) runs the pipelines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pydantic import ValidationError

from generations.catalog import MAX_REFERENCE_URLS
from generations.requests import EditingTool
from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.classical import to_uint8
from gpu_consumers.handlers.model_common import resize
from schemas.task_params import ReferenceImage

# A LoRA weight the catalog leaves open: the adapter at the strength it was trained for.
DEFAULT_LORA_WEIGHT = 1.0
# The region a model repaints is grown by 2% of the image's shorter side (at least 2 px): the
# seam between the new subject and the old background then lies inside the repainted area, so
# no rim of the old subject survives, while pixels farther out stay exactly the base image's.
REGION_GROW_FRAC, REGION_GROW_MIN_PX = 0.02, 2
# A found region covering under 0.5% or over 99.5% of the image is no subject boundary (the
# matte said all or nothing): the segmentation model did not find the subject.
REGION_MIN_FRAC, REGION_MAX_FRAC = 0.005, 0.995
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class EntryRef:
    """A catalog entry as the planner put it in ``provider_config``; ``slot`` is the LoRA slot."""

    slot: str  # "subject" | "product"
    name: str
    id: str | None = None
    lora_ref: str | None = None
    lora_weight: float | None = None
    references: tuple[ReferenceImage, ...] = ()  # the entry's reference images (type: the slot)

    @property
    def weight(self) -> float:
        return DEFAULT_LORA_WEIGHT if self.lora_weight is None else self.lora_weight


@dataclass(frozen=True)
class ToolSpec:
    """What a tool uses: the catalog slots whose LoRA it applies, the reference types it looks
    for first, whether it finds its region when no mask is given, and its default strength."""

    slots: tuple[str, ...]
    reference_types: tuple[str, ...]
    finds_region: bool
    default_strength: float | None  # None: the mode's default (inpaint 1.0, img2img 0.8)


TOOLS: dict[EditingTool, ToolSpec] = {
    # General compositing: references placed in the mask, harmonised; any entry's LoRA applies.
    EditingTool.EDIT: ToolSpec(("subject", "product"), ("garment", "product"), False, None),
    # A new person in the subject's place: repainted from scratch (1.0) with the subject's LoRA.
    EditingTool.SUBJECT_SWAP: ToolSpec(("subject",), ("subject", "person", "model"), True, 1.0),
    # The product made better, not another product: half the noise (0.5) keeps its shape.
    EditingTool.PRODUCT_ENHANCEMENT: ToolSpec(("product",), ("product", "garment"), True, 0.5),
}
# EDIT with a reference placed in the mask: enough noise to blend its edges and lighting into
# the scene, little enough that the placed reference stays recognisable.
PLACED_STRENGTH = 0.6


def tool_option(key: str, value: Any) -> EditingTool:
    """``provider_config.tool``."""
    try:
        return EditingTool(value)
    except ValueError:
        raise InvalidInput(f"provider_config.{key} must be one of "
                           f"{', '.join(t.value for t in EditingTool)}, got {value!r}") from None


def entry_option(key: str, value: Any) -> EntryRef:
    """``provider_config.subject`` / ``provider_config.product``: a catalog entry."""
    fields = ("id", "name", "lora_ref", "lora_weight", "reference_urls")
    if not isinstance(value, dict) or set(value) - set(fields):
        raise InvalidInput(f"provider_config.{key} must be a catalog entry: an object of "
                           f"{', '.join(fields)} (the planner sets it from the catalog)")
    name, lora_ref, weight, entry_id = (value.get(f) for f in ("name", "lora_ref", "lora_weight", "id"))
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"provider_config.{key}.name must be a non-empty string of at most "
                           f"{MAX_NAME_CHARS} characters")
    if lora_ref is not None and (not isinstance(lora_ref, str) or not lora_ref):
        raise InvalidInput(f"provider_config.{key}.lora_ref must be a non-empty string or null")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float)
                               or not 0.0 <= weight <= 1.0):
        raise InvalidInput(f"provider_config.{key}.lora_weight must be a number in 0..1 or null")
    if entry_id is not None and not isinstance(entry_id, str):
        raise InvalidInput(f"provider_config.{key}.id must be a string or null")
    urls = value.get("reference_urls") or []
    if not isinstance(urls, list) or len(urls) > MAX_REFERENCE_URLS:
        raise InvalidInput(f"provider_config.{key}.reference_urls must be a list of at most "
                           f"{MAX_REFERENCE_URLS} URLs")
    try:
        references = tuple(ReferenceImage(url=url, type=key) for url in urls)
    except ValidationError as exc:
        raise InvalidInput(f"provider_config.{key}.reference_urls: {exc.errors()[0]['msg']}") from None
    return EntryRef(key, name.strip(), entry_id, lora_ref,
                    None if weight is None else float(weight), references)


def tool_loras(spec: ToolSpec, entries: dict[str, EntryRef]) -> tuple[dict[str, float], dict[str, str]]:
    """(slot -> weight, slot -> LoRA reference) of the entries the tool applies that have a LoRA."""
    used = [entries[s] for s in spec.slots if s in entries and entries[s].lora_ref]
    return {e.slot: e.weight for e in used}, {e.slot: str(e.lora_ref) for e in used}


def choose_reference(references: Sequence[ReferenceImage], preferred: tuple[str, ...],
                     stored: Sequence[ReferenceImage] = ()) -> ReferenceImage | None:
    """The request's first reference of the tool's preferred types (in the order of
    ``preferred``); else the first of ``stored`` (the tool's catalog entries' own references);
    else the request's first reference; None without any."""
    for kind in preferred:
        for reference in references:
            if reference.type.lower() == kind:
                return reference
    if stored:
        return stored[0]
    return references[0] if references else None


def grow_px(height: int, width: int) -> int:
    return max(REGION_GROW_MIN_PX, round(REGION_GROW_FRAC * min(height, width)))


def region_from_alpha(alpha: np.ndarray) -> np.ndarray | None:
    """A foreground matte (float 0..1) as the region to repaint: uint8 0/255, the foreground
    (alpha >= 0.5) grown by :func:`grow_px`; None when it is no subject (all or nothing)."""
    foreground = alpha >= 0.5
    fraction = float(foreground.mean())
    if not REGION_MIN_FRAC <= fraction <= REGION_MAX_FRAC:
        return None
    background = (~foreground).astype(np.uint8)
    distance = cv2.distanceTransform(background, cv2.DIST_L2, 5)  # distance to the foreground
    return np.where(distance <= grow_px(*alpha.shape[:2]), 255, 0).astype(np.uint8)


def place_reference(base: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """EDIT's composite: ``reference`` scaled to cover the bounding box of the mask (aspect kept,
    centre-cropped, never stretched) and blended in through the mask, so it lands only where
    the mask is white. The base image elsewhere, untouched."""
    ys, xs = np.nonzero(mask >= 128)
    if ys.size == 0:
        return base
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    box_w, box_h = x1 - x0, y1 - y0
    ref_h, ref_w = reference.shape[:2]
    scale = max(box_w / ref_w, box_h / ref_h)
    cover = resize(reference, (max(box_w, round(ref_w * scale)), max(box_h, round(ref_h * scale))))
    top, left = (cover.shape[0] - box_h) // 2, (cover.shape[1] - box_w) // 2
    patch = cover[top:top + box_h, left:left + box_w].astype(np.float32)
    out = base.copy()
    weight = mask[y0:y1, x0:x1, None].astype(np.float32) / 255.0
    out[y0:y1, x0:x1] = to_uint8(weight * patch + (1.0 - weight) * base[y0:y1, x0:x1].astype(np.float32))
    return out


def keep_outside(edited: np.ndarray, base: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The model's pixels where the mask is white, the base image's where it is black (grey
    levels blend): outside the mask the output is exactly the base image."""
    weight = mask.astype(np.float32)[..., None] / 255.0
    return to_uint8(weight * edited.astype(np.float32) + (1.0 - weight) * base.astype(np.float32))
