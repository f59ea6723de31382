"""FACE_ENHANCER: find faces and enhance each one; nothing outside a face region changes.

Providers of this type live here, one class each:

* ``classical`` (:class:`ClassicalFaceEnhancer`, weight-free), described below;
* ``diffusers`` (:class:`DiffusersFaceEnhancer`): each face redrawn by img2img guided by
  ``prompt`` (described at the end).

Classical method, with ``s = strength`` (default 0.5, the seed's example):

1. detect faces (``face_detection.default_face_detector``: a Haar cascade where the running
   OpenCV has one, else the skin-tone fallback; the handler's constructor takes another one);
   no face: the input pixels are returned unchanged and ``extra["faces"]`` is 0;
2. in each box grown by 15% (hairline, chin), on float32 RGB 0..255:
   ``smooth = bilateral(x, sigmaColor=30, sigmaSpace=2% of the box side)`` (evens out skin
   while keeping edges), ``enhanced = smooth + 0.6 * (smooth - gauss(smooth, 1% of the side))``
   (puts back eye, lash and lip detail the smoothing softened),
   ``delta = s * (enhanced - x)``;
3. ``preserve_identity`` (default True, as in the seed's example): each channel's change is
   capped at ``0.10 * 255 * s`` levels (10% at strength 1), so features keep their shape;
4. the delta is applied through a feathered ellipse inside the box (exactly 0 at its border),
   so there is no visible rectangle and pixels outside the boxes are untouched.

``extra`` records ``faces``, ``face_boxes`` (the regions processed, ``[x, y, w, h]``),
``face_detector`` and ``prompt`` (no model reads it here).

Diffusion provider (``diffusers``): faces are found as above (no face: the input unchanged); each
box grown by 15% is scaled to the model's native resolution, run through img2img (the base model
derived with ``from_pipe``) with strength ``s`` and ``prompt`` (None: a generic face-quality
prompt), scaled back and pasted through the same feathered ellipse, so nothing outside the boxes
changes. ``preserve_identity`` (default True) caps the strength at 0.35: above roughly 0.4 img2img
starts redrawing the shape of eyes, nose and mouth, i.e. another person; below it, it restores
texture and sharpness on the same face. ``provider_config``: ``num_inference_steps``,
``guidance_scale``, ``negative_prompt``, ``seed`` (None: random, recorded).
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from gpu_consumers.handlers.base import HandlerResult, TaskContext
from gpu_consumers.handlers.classical import (
    StepCounter,
    encode_image,
    load_picture,
    to_uint8,
    unsharp,
)
from gpu_consumers.handlers.face_detection import (
    Box,
    FaceDetector,
    default_face_detector,
    detect_faces,
    expand_box,
    feather_mask,
)
from gpu_consumers.handlers.model_common import (
    DIFFUSION_OPTIONS,
    ModelProgress,
    denoise_steps,
    enhance_regions,
    int_in,
    provider_options,
    resolve_seed,
    torch_generator,
)
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import Role
from schemas.enums import TaskType
from schemas.task_params import SEED_MAX, SEED_MIN, FaceEnhancerParams

MODEL_NAME = "opencv-bilateral-detail"
# The seed's example strength.
DEFAULT_STRENGTH = 0.5
# Grow face boxes by 15% per side to include hairline and chin.
FACE_MARGIN_FRAC = 0.15
# Bilateral: colour sigma 30 levels smooths skin tones but stops at feature edges; the spatial
# sigma follows the face size so a 60 px and a 600 px face get the same look.
BILATERAL_SIGMA_COLOR, BILATERAL_SPACE_FRAC = 30.0, 0.02
# Detail pass: unsharp at 1% of the face side, amount 0.6.
DETAIL_SIGMA_FRAC, DETAIL_AMOUNT = 0.01, 0.6
# preserve_identity: at most 10% of the range per channel at strength 1.
IDENTITY_MAX_DELTA_FRAC = 0.10


def enhance_region(crop: np.ndarray, strength: float, preserve_identity: bool) -> np.ndarray:
    """Enhanced uint8 crop (same shape) following steps 2-4 of the module doc."""
    height, width = crop.shape[:2]
    side = min(height, width)
    smooth = cv2.bilateralFilter(crop, d=-1, sigmaColor=BILATERAL_SIGMA_COLOR,
                                 sigmaSpace=max(1.0, BILATERAL_SPACE_FRAC * side)).astype(np.float32)
    enhanced = unsharp(smooth, max(0.5, DETAIL_SIGMA_FRAC * side), DETAIL_AMOUNT)
    original = crop.astype(np.float32)
    delta = strength * (np.clip(enhanced, 0.0, 255.0) - original)
    if preserve_identity:
        limit = IDENTITY_MAX_DELTA_FRAC * 255.0 * strength
        delta = np.clip(delta, -limit, limit)
    return to_uint8(original + feather_mask(width, height)[..., None] * delta)


class ClassicalFaceEnhancer:
    task_type: ClassVar[TaskType] = TaskType.FACE_ENHANCER
    providers: ClassVar[tuple[str, ...]] = ("classical",)

    def __init__(self, face_detector: FaceDetector | None = None) -> None:
        self._face_detector = face_detector

    def run(self, params: FaceEnhancerParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        picture = load_picture(ctx, params.base_image_url, "base_image_url")
        ctx.cancel.raise_if_cancelled()

        # 2. prepare
        strength = DEFAULT_STRENGTH if params.strength is None else params.strength
        keep_identity = params.preserve_identity is not False
        detector = self._face_detector or default_face_detector()

        # 3. process: detection is one step, then one step per face
        found = detect_faces(picture.rgb, detector)
        boxes: list[Box] = [expand_box(b, FACE_MARGIN_FRAC, picture.width, picture.height) for b in found]
        steps = StepCounter(ctx, 1 + len(boxes) + 1)
        steps.step()
        rgb = picture.rgb
        if boxes and strength > 0:
            rgb = rgb.copy()
            for x, y, w, h in boxes:
                crop = np.ascontiguousarray(rgb[y:y + h, x:x + w])
                rgb[y:y + h, x:x + w] = enhance_region(crop, strength, keep_identity)
                steps.step()

        # 4. encode
        output = encode_image(rgb, picture.alpha)
        steps.finish()

        # 5. return
        return HandlerResult(
            outputs=[output],
            model=MODEL_NAME,
            provider="classical",
            seed=None,
            width=picture.width,
            height=picture.height,
            extra={
                "faces": len(boxes),
                "face_boxes": [list(b) for b in boxes],
                "face_detector": detector.name,
                "strength": strength,
                "preserve_identity": keep_identity,
                "prompt": params.prompt,
            },
        )


# --------------------------------------------------------------------------- model providers

# preserve_identity: the highest img2img strength that keeps the face's features (see the doc).
IDENTITY_MAX_STRENGTH = 0.35
DEFAULT_FACE_PROMPT = "detailed face, natural skin texture, sharp eyes"
OPTIONS = {**DIFFUSION_OPTIONS, "seed": int_in(SEED_MIN, SEED_MAX)}


class DiffusersFaceEnhancer:
    task_type: ClassVar[TaskType] = TaskType.FACE_ENHANCER
    providers: ClassVar[tuple[str, ...]] = ("diffusers",)

    def __init__(self, face_detector: FaceDetector | None = None) -> None:
        self._face_detector = face_detector

    def run(self, params: FaceEnhancerParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        options = provider_options(params.provider_config, OPTIONS)
        picture = load_picture(ctx, params.base_image_url, "base_image_url")
        ctx.cancel.raise_if_cancelled()

        # 2. load from the warm cache
        cache = ModelCache.for_context(ctx)
        pipe = cache.img2img()
        call_kwargs = cache.prepare(pipe, low_memory=ctx.low_memory)

        # 3. prepare: faces, strength, steps, seed
        detector = self._face_detector or default_face_detector()
        boxes: list[Box] = [expand_box(b, FACE_MARGIN_FRAC, picture.width, picture.height)
                            for b in detect_faces(picture.rgb, detector)]
        keep_identity = params.preserve_identity is not False
        strength = DEFAULT_STRENGTH if params.strength is None else params.strength
        if keep_identity:
            strength = min(strength, IDENTITY_MAX_STRENGTH)
        seed = resolve_seed(options.pop("seed", None))
        steps = denoise_steps(options.pop("num_inference_steps", None)
                              or cache.default_steps(Role.TEXT_TO_IMAGE), strength)
        if steps is None:
            boxes = []  # a strength too small for one denoising step changes nothing
        progress = ModelProgress(ctx, 1 + len(boxes))
        progress.advance()

        # 4. run: one img2img pass per face
        rgb = picture.rgb
        if boxes:
            rgb = enhance_regions(pipe, rgb, boxes, prompt=params.prompt or DEFAULT_FACE_PROMPT,
                                  strength=strength, steps=steps,
                                  generator=torch_generator(ctx.device, seed), progress=progress,
                                  call_kwargs={**options, **call_kwargs})

        # 5. encode
        output = encode_image(rgb, picture.alpha)
        progress.finish()

        # 6. return
        return HandlerResult(
            outputs=[output], model=cache.model_id(Role.TEXT_TO_IMAGE), provider="diffusers",
            seed=seed, width=picture.width, height=picture.height,
            extra={"faces": len(boxes), "face_boxes": [list(b) for b in boxes],
                   "face_detector": detector.name, "strength": strength,
                   "preserve_identity": keep_identity, "num_inference_steps": steps,
                   "prompt": params.prompt, **options},
        )
