"""VIDEO_GENERATION: a short clip from one image, with Stable Video Diffusion (SVD).

One provider, ``diffusers`` (:class:`DiffusersVideoGeneration`), on the registry's
``image_to_video`` role (SVD-XT in production, a tiny SVD offline).

* ``fps`` (None: 7, SVD's own default) is both the playback rate of the MP4 and the frame-rate
  conditioning SVD was trained with; ``motion_bucket_id`` (None: 127, SVD's default) sets how
  much moves; ``seed`` as everywhere (None: random, recorded).
* frames: ``round(fps * duration)``, at least 2, capped at ``max_frames``: 25 in production (the
  clip length SVD-XT was trained for; longer clips need chained runs, which this provider does not
  do) and 8 offline (CPU seconds), or the ``max_frames`` option of the ``image_to_video`` spec.
  ``duration`` None means the full ``max_frames``. When the cap applies, the clip is shorter than
  asked: the result records the real ``duration`` and ``extra["frames_requested"]``.
* size: the source image's, scaled down to at most 1024 px on the long side (SVD's training
  width) and snapped to multiples of 8; the result records it.
* encoding: OpenCV's ``VideoWriter`` into an MP4 container. H.264 (``avc1``) where the OpenCV
  build has an encoder for it, else MPEG-4 Part 2 (``mp4v``), which the OpenCV wheels always
  have (their FFmpeg has no libx264); ``extra["codec"]`` says which. MPEG-4 Part 2 plays in
  ffmpeg/VLC-based players but not in most browsers: a deployment serving browsers should install
  an OpenCV or FFmpeg with H.264. The codec is chosen once per process.
* ``provider_config``: ``num_inference_steps``, ``noise_aug_strength`` (0..1),
  ``min_guidance_scale`` / ``max_guidance_scale`` (0..30), ``decode_chunk_size`` (frames decoded
  at once, 1..64; None: 8, and 2 on the ``low_memory`` retry).
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import ClassVar

import cv2
import numpy as np
from PIL import Image

from gpu_consumers.errors import ProviderError
from gpu_consumers.handlers.base import HandlerResult, OutputFile, TaskContext
from gpu_consumers.handlers.classical import to_picture
from gpu_consumers.handlers.model_common import (
    ModelProgress,
    float_in,
    int_in,
    provider_options,
    resize,
    resolve_seed,
    snap,
    torch_generator,
)
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import ModelProfile, Role
from schemas.enums import TaskType
from schemas.task_params import STEPS_MAX, STEPS_MIN, VideoGenerationParams

DEFAULT_PROVIDER = "diffusers"
# SVD's own defaults.
DEFAULT_FPS, DEFAULT_MOTION_BUCKET_ID = 7, 127
MAX_FRAMES = {ModelProfile.PRODUCTION: 25, ModelProfile.OFFLINE: 8}
MIN_FRAMES = 2  # one frame is a still, not a video
MAX_SIDE = 1024
# Frames the VAE decodes at once: 8 fits a 24 GB GPU at 1024x576; 2 on the low-memory retry.
DECODE_CHUNK, LOW_MEMORY_DECODE_CHUNK = 8, 2
OPTIONS = {
    "num_inference_steps": int_in(STEPS_MIN, STEPS_MAX),
    "noise_aug_strength": float_in(0.0, 1.0),
    "min_guidance_scale": float_in(0.0, 30.0),
    "max_guidance_scale": float_in(0.0, 30.0),
    "decode_chunk_size": int_in(1, 64),
}
FOURCCS = ("avc1", "mp4v")  # H.264 first, MPEG-4 Part 2 always available


@functools.cache
def mp4_codec() -> str:
    """The first codec of FOURCCS this OpenCV can write (probed once per process)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "probe.mp4")
        for fourcc in FOURCCS:
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 8, (16, 16))
            opened = writer.isOpened()
            writer.release()
            if opened:
                return fourcc
    raise ProviderError("OpenCV can write no MP4 codec here (tried " + ", ".join(FOURCCS) + ")")


def encode_mp4(frames: list[np.ndarray], fps: int) -> tuple[OutputFile, str]:
    """RGB uint8 frames -> MP4 bytes, and the codec used."""
    codec = mp4_codec()
    height, width = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "video.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), float(fps), (width, height))
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        with open(path, "rb") as handle:
            data = handle.read()
    if not data:
        raise ProviderError(f"OpenCV wrote an empty MP4 ({codec}, {width}x{height}, {len(frames)} frames)")
    return OutputFile(data, "video/mp4", ".mp4"), codec


def frame_plan(fps: int, duration: float | None, max_frames: int) -> tuple[int, int]:
    """(frames to generate, frames the task asked for)."""
    requested = max_frames if duration is None else max(MIN_FRAMES, round(fps * duration))
    return min(requested, max_frames), requested


def video_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, MAX_SIDE / max(width, height))
    return snap(width * scale), snap(height * scale)


# --------------------------------------------------------------------------- model providers


class DiffusersVideoGeneration:
    task_type: ClassVar[TaskType] = TaskType.VIDEO_GENERATION
    providers: ClassVar[tuple[str, ...]] = ("diffusers",)

    def run(self, params: VideoGenerationParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        options = provider_options(params.provider_config, OPTIONS)
        picture = to_picture(ctx.fetch.fetch_image(params.base_image_url, mode="RGB"),
                             "base_image_url")
        ctx.cancel.raise_if_cancelled()

        # 2. load from the warm cache
        cache = ModelCache.for_context(ctx)
        pipe = cache.image_to_video()
        cache.prepare(pipe, low_memory=ctx.low_memory)

        # 3. prepare
        seed = resolve_seed(params.seed)
        fps = params.fps or DEFAULT_FPS
        motion = params.motion_bucket_id or DEFAULT_MOTION_BUCKET_ID
        max_frames = int(cache.registry.spec(Role.IMAGE_TO_VIDEO).options.get(
            "max_frames", MAX_FRAMES[cache.registry.profile]))
        num_frames, requested = frame_plan(fps, params.duration, max_frames)
        width, height = video_size(picture.width, picture.height)
        steps = options.pop("num_inference_steps", None) or cache.default_steps(Role.IMAGE_TO_VIDEO)
        chunk = options.pop("decode_chunk_size",
                            LOW_MEMORY_DECODE_CHUNK if ctx.low_memory else DECODE_CHUNK)
        progress = ModelProgress(ctx, 2)

        # 4. run
        with progress.phase() as on_step_end:
            output = pipe(Image.fromarray(resize(picture.rgb, (width, height))), height=height,
                          width=width, num_frames=num_frames, num_inference_steps=steps, fps=fps,
                          motion_bucket_id=motion, decode_chunk_size=min(chunk, num_frames),
                          generator=torch_generator(ctx.device, seed), output_type="pil",
                          callback_on_step_end=on_step_end, **options)
        frames = [np.asarray(frame.convert("RGB")) for frame in output.frames[0]]

        # 5. encode
        encoded, codec = encode_mp4(frames, fps)
        progress.finish()

        # 6. return
        return HandlerResult(
            outputs=[encoded], model=cache.model_id(Role.IMAGE_TO_VIDEO), provider="diffusers",
            seed=seed, width=width, height=height, fps=fps, frame_count=len(frames),
            duration_s=len(frames) / fps,
            extra={"codec": codec, "motion_bucket_id": motion, "num_inference_steps": steps,
                   "frames_requested": requested, "max_frames": max_frames, **options},
        )
