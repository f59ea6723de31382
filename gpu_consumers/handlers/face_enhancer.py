"""FACE_ENHANCER: find faces and enhance each one; nothing outside a face region changes.

Providers of this type live here, one class each:

* ``classical`` (:class:`ClassicalFaceEnhancer`, weight-free), described below;
* the diffusion provider (``diffusers``, face inpainting guided by ``prompt``) is to be added
  below, in the same module.

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
"""

from __future__ import annotations

from typing import ClassVar

import cv2
import numpy as np

from gpu_consumers.handler import HandlerResult, TaskContext
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
from schemas.enums import TaskType
from schemas.task_params import FaceEnhancerParams

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
# The diffusion provider (provider_type "diffusers") goes here.
