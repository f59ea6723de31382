"""REFINE: upscale to an exact size and enhance, with an optional pass over faces.

Providers of this type live here, one class each:

* ``classical`` (:class:`ClassicalRefine`, weight-free), described below;
* ``diffusers`` (:class:`DiffusersRefine`): the same sizing, then diffusion passes (see the
  section "Diffusion provider" below).

Output size (checked against the REFINE limits of ``schemas.task_params``; exceeding them is
INVALID_INPUT):

* ``upscale_enabled`` False: no resize; ``target_*`` and ``upscale_factor`` are ignored and
  listed in ``extra["ignored"]``. None counts as True (REFINE means "upscale and enhance").
* ``target_width`` and ``target_height`` both given: exactly that size (they win over the factor).
* only one given: that side exactly, the other ``round(side * aspect)``, keeping the aspect.
* neither: ``round(width * f) x round(height * f)`` with ``f = upscale_factor`` (default 2, the
  seed's example).

Classical pipeline, in order:

1. denoise (``upscale_denoise`` d > 0): ``cv2.fastNlMeansDenoisingColored`` with
   ``h = hColor = 10 * d`` (10 is OpenCV's "removes noise well" value), at the *input* size so
   Lanczos does not enlarge the noise (and because it is cheaper there);
2. Lanczos resize (Pillow ``LANCZOS``; alpha resized premultiplied);
3. sharpen: ``min(ceil(upscale_steps / 10), 5)`` iterations (None counts as 10 steps, so one) of
   a small unsharp mask ``x + 0.3 * (x - gauss(x, sigma=1))``, restoring edge contrast that
   interpolation softens; steps map onto diffusion step counts (20 -> 2 iterations);
4. faces (``face_detail_enabled``): faces are detected on the result (see
   ``face_detection.default_face_detector``); each box, grown by 15%, is denoised with
   ``h = 10 * face_detail_denoise`` and sharpened ``min(ceil(face_detail_steps / 10), 5)`` times
   (None: 10 steps), then blended in through a feathered ellipse, so no pixel outside a box moves.

``upscale_prompt`` / ``face_detail_prompt`` have no meaning without a model; they are recorded
in ``extra``.

Diffusion provider (``diffusers``), in order:

1. Lanczos resize to the output size above (alpha resized with it and kept);
2. upscale pass (upscaling on, ``upscale_denoise`` > 0; None means 0.3, the seed's example):
   img2img over the whole resized image with strength ``upscale_denoise``,
   ``upscale_steps`` steps (None: the model's default) and ``upscale_prompt`` (None: a generic
   quality prompt), at the nearest multiples of 8 and resized back; it re-draws the detail that
   interpolation cannot invent. The whole frame is one pass: very large targets need a GPU with
   the memory for them (``low_memory`` tiles the VAE);
3. faces (``face_detail_enabled``): found on the resized image (before step 2; a low-denoise pass
   does not move them), each box grown by 15% is run through img2img at the model's native
   resolution with ``face_detail_denoise`` (None: 0.2, the seed's example),
   ``face_detail_steps`` and ``face_detail_prompt``, and pasted back through a feathered
   ellipse, so nothing outside a box changes in that pass.

img2img runs ``int(steps * strength)`` denoising steps; where that is 0 the step count is raised
until one step runs. ``provider_config``: ``guidance_scale``, ``negative_prompt``, ``seed``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from PIL import Image

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.base import HandlerResult, TaskContext
from gpu_consumers.handlers.classical import (
    StepCounter,
    encode_image,
    load_picture,
    nl_means,
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
    run_img2img,
    torch_generator,
)
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import Role
from schemas.enums import TaskType
from schemas.task_params import REFINE_DIM_MAX, REFINE_MAX_PIXELS, SEED_MAX, SEED_MIN, RefineParams

MODEL_NAME = "pillow-lanczos-unsharp"
# The seed's example factor; used when neither a factor nor a target size is given.
DEFAULT_UPSCALE_FACTOR = 2.0
# fastNlMeans filter strength at denoise = 1 (OpenCV docs: 10 removes noise well, also detail).
NLM_MAX_H = 10.0
# Diffusion-style step counts map to sharpen iterations: one per 10 steps, at most five
# (beyond that repeated unsharp masking only adds halos).
STEPS_PER_ITERATION, MAX_SHARPEN_ITERATIONS = 10, 5
DEFAULT_STEPS = 10
# A gentle unsharp per iteration: sigma 1 px targets the detail Lanczos softens.
SHARPEN_SIGMA, SHARPEN_AMOUNT = 1.0, 0.3
# Grow face boxes by 15% per side to include hairline and chin.
FACE_MARGIN_FRAC = 0.15


def output_size(params: RefineParams, width: int, height: int) -> tuple[int, int]:
    if params.upscale_enabled is False:
        return width, height
    tw, th = params.target_width, params.target_height
    if tw is not None and th is not None:
        return tw, th
    if tw is not None:
        return tw, max(1, round(height * tw / width))
    if th is not None:
        return max(1, round(width * th / height)), th
    factor = params.upscale_factor or DEFAULT_UPSCALE_FACTOR
    return round(width * factor), round(height * factor)


def checked_output_size(params: RefineParams, width: int, height: int) -> tuple[int, int]:
    """:func:`output_size`, INVALID_INPUT when over the REFINE limits."""
    width, height = output_size(params, width, height)
    if max(width, height) > REFINE_DIM_MAX or width * height > REFINE_MAX_PIXELS:
        raise InvalidInput(
            f"REFINE output would be {width}x{height} px, over the limit of {REFINE_DIM_MAX} px "
            f"a side and {REFINE_MAX_PIXELS:,} pixels; lower upscale_factor or the target size"
        )
    return width, height


def sharpen_iterations(steps: int | None) -> int:
    return min(math.ceil((steps or DEFAULT_STEPS) / STEPS_PER_ITERATION), MAX_SHARPEN_ITERATIONS)


def _ignored(params: RefineParams) -> list[str]:
    if params.upscale_enabled is not False:
        return []
    names = ("target_width", "target_height", "upscale_factor", "upscale_steps", "upscale_denoise")
    return [name for name in names if getattr(params, name) is not None]


class ClassicalRefine:
    task_type: ClassVar[TaskType] = TaskType.REFINE
    providers: ClassVar[tuple[str, ...]] = ("classical",)

    def __init__(self, face_detector: FaceDetector | None = None) -> None:
        self._face_detector = face_detector

    def run(self, params: RefineParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        picture = load_picture(ctx, params.base_image_url, "base_image_url")
        width, height = checked_output_size(params, picture.width, picture.height)
        ctx.cancel.raise_if_cancelled()

        # 2. prepare: the plan decides the number of progress steps
        upscaling = params.upscale_enabled is not False
        denoise = (params.upscale_denoise or 0.0) if upscaling else 0.0
        iterations = sharpen_iterations(params.upscale_steps) if upscaling else 0
        faces_on = bool(params.face_detail_enabled)
        detector = (self._face_detector or default_face_detector()) if faces_on else None
        steps = StepCounter(ctx, (denoise > 0) + 1 + iterations + 2 * faces_on + 1)

        # 3. process
        rgb = picture.rgb
        if denoise > 0:
            rgb = nl_means(rgb, NLM_MAX_H * denoise)
            steps.step()
        rgb, alpha = self._resize(rgb, picture.alpha, (width, height))
        steps.step()
        work = rgb.astype(np.float32)
        for _ in range(iterations):
            work = np.clip(unsharp(work, SHARPEN_SIGMA, SHARPEN_AMOUNT), 0.0, 255.0)
            steps.step()
        rgb = to_uint8(work)
        boxes: list[Box] = []
        if detector is not None:
            boxes = [expand_box(b, FACE_MARGIN_FRAC, width, height) for b in detect_faces(rgb, detector)]
            steps.step()
            rgb = self._face_detail(rgb, boxes, params, ctx)
            steps.step()

        # 4. encode
        output = encode_image(rgb, alpha)
        steps.finish()

        # 5. return
        extra: dict[str, object] = {
            "source_size": [picture.width, picture.height],
            "sharpen_iterations": iterations,
            "denoise_h": NLM_MAX_H * denoise,
            "ignored": _ignored(params),
            "upscale_prompt": params.upscale_prompt,
            "face_detail_prompt": params.face_detail_prompt,
        }
        if detector is not None:
            extra.update(faces=len(boxes), face_boxes=[list(b) for b in boxes], face_detector=detector.name)
        return HandlerResult(outputs=[output], model=MODEL_NAME, provider="classical", seed=None,
                             width=width, height=height, extra=extra)

    @staticmethod
    def _resize(rgb: np.ndarray, alpha: np.ndarray | None,
                size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        if (rgb.shape[1], rgb.shape[0]) == size:
            return rgb, alpha
        if alpha is None:
            return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS)), None
        # Pillow resizes RGBA premultiplied, so transparent pixels do not bleed colour.
        rgba = Image.fromarray(np.dstack([rgb, alpha])).resize(size, Image.Resampling.LANCZOS)
        out = np.asarray(rgba)
        return np.ascontiguousarray(out[..., :3]), np.ascontiguousarray(out[..., 3])

    @staticmethod
    def _face_detail(rgb: np.ndarray, boxes: list[Box], params: RefineParams,
                     ctx: TaskContext) -> np.ndarray:
        denoise_h = NLM_MAX_H * (params.face_detail_denoise or 0.0)
        iterations = sharpen_iterations(params.face_detail_steps)
        out = rgb.copy()
        for x, y, w, h in boxes:
            ctx.cancel.raise_if_cancelled()  # faces are independent: a cheap place to stop
            crop = out[y:y + h, x:x + w]
            work = nl_means(np.ascontiguousarray(crop), denoise_h) if denoise_h > 0 else crop
            work = work.astype(np.float32)
            for _ in range(iterations):
                work = np.clip(unsharp(work, SHARPEN_SIGMA, SHARPEN_AMOUNT), 0.0, 255.0)
            mask = feather_mask(w, h)[..., None]
            blended = crop.astype(np.float32) + mask * (work - crop.astype(np.float32))
            out[y:y + h, x:x + w] = to_uint8(blended)
        return out


# --------------------------------------------------------------------------- model providers

# The seed's example values, used when the task leaves them out.
DEFAULT_UPSCALE_DENOISE, DEFAULT_FACE_DENOISE = 0.3, 0.2
DEFAULT_UPSCALE_PROMPT = "high resolution photo, sharp focus, fine detail"
DEFAULT_FACE_PROMPT = "detailed face, natural skin texture, sharp eyes"
DIFFUSION_REFINE_OPTIONS = {"guidance_scale": DIFFUSION_OPTIONS["guidance_scale"],
                            "negative_prompt": DIFFUSION_OPTIONS["negative_prompt"],
                            "seed": int_in(SEED_MIN, SEED_MAX)}


class DiffusersRefine:
    task_type: ClassVar[TaskType] = TaskType.REFINE
    providers: ClassVar[tuple[str, ...]] = ("diffusers",)

    def __init__(self, face_detector: FaceDetector | None = None) -> None:
        self._face_detector = face_detector

    def run(self, params: RefineParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        options = provider_options(params.provider_config, DIFFUSION_REFINE_OPTIONS)
        picture = load_picture(ctx, params.base_image_url, "base_image_url")
        width, height = checked_output_size(params, picture.width, picture.height)
        ctx.cancel.raise_if_cancelled()

        # 2. load from the warm cache (the img2img pipeline shares the base model's weights)
        cache = ModelCache.for_context(ctx)
        pipe = cache.img2img()
        call_kwargs = {**options, **cache.prepare(pipe, low_memory=ctx.low_memory)}
        seed = resolve_seed(call_kwargs.pop("seed", None))

        # 3. prepare: resize, find faces, plan the passes
        rgb, alpha = ClassicalRefine._resize(picture.rgb, picture.alpha, (width, height))
        upscaling = params.upscale_enabled is not False
        denoise = (DEFAULT_UPSCALE_DENOISE if params.upscale_denoise is None
                   else params.upscale_denoise) if upscaling else 0.0
        default_steps = cache.default_steps(Role.TEXT_TO_IMAGE)
        upscale_steps = denoise_steps(params.upscale_steps or default_steps, denoise)
        boxes: list[Box] = []
        detector = None
        if params.face_detail_enabled:
            detector = self._face_detector or default_face_detector()
            boxes = [expand_box(b, FACE_MARGIN_FRAC, width, height) for b in detect_faces(rgb, detector)]
        face_denoise = (DEFAULT_FACE_DENOISE if params.face_detail_denoise is None
                        else params.face_detail_denoise)
        face_steps = denoise_steps(params.face_detail_steps or default_steps, face_denoise)
        if face_steps is None:
            boxes = []
        progress = ModelProgress(ctx, 1 + (upscale_steps is not None) + len(boxes))
        progress.advance()
        generator = torch_generator(ctx.device, seed)

        # 4. run: the upscale pass, then each face
        if upscale_steps is not None:
            with progress.phase() as on_step_end:
                rgb = run_img2img(pipe, rgb, prompt=params.upscale_prompt or DEFAULT_UPSCALE_PROMPT,
                                  strength=denoise, steps=upscale_steps, generator=generator,
                                  on_step_end=on_step_end, call_kwargs=call_kwargs)
        if boxes:
            rgb = enhance_regions(pipe, rgb, boxes, prompt=params.face_detail_prompt or DEFAULT_FACE_PROMPT,
                                  strength=face_denoise, steps=face_steps, generator=generator,
                                  progress=progress, call_kwargs=call_kwargs)

        # 5. encode
        output = encode_image(rgb, alpha)
        progress.finish()

        # 6. return
        extra: dict[str, object] = {
            "source_size": [picture.width, picture.height],
            "upscale_denoise": denoise,
            "upscale_steps": upscale_steps,
            "ignored": _ignored(params),
            **options,
        }
        if detector is not None:
            extra.update(faces=len(boxes), face_boxes=[list(b) for b in boxes],
                         face_detector=detector.name, face_detail_denoise=face_denoise,
                         face_detail_steps=face_steps)
        return HandlerResult(outputs=[output], model=cache.model_id(Role.TEXT_TO_IMAGE),
                             provider="diffusers", seed=seed, width=width, height=height,
                             extra=extra)
