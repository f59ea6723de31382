"""Steps shared by the model-backed providers (``diffusers`` / ``transformers``).

The handlers read like a diffusers pipeline's ``__call__``; the pieces they share live here:

* seeds: :func:`resolve_seed` (None -> a random 63-bit seed, recorded in the result) and
  :func:`torch_generator` (a ``torch.Generator`` on the task's device);
* progress: :class:`ModelProgress` splits 0..1 over a task's phases; :meth:`ModelProgress.phase`
  gives the ``callback_on_step_end`` of one pipeline call, which reports ``(step + 1) / steps``
  of its share and checks the cancel token at every denoising step;
* ``provider_config``: :func:`provider_options` lets through a whitelist of keys, each validated
  (unknown keys or bad values are INVALID_INPUT, never passed blindly to a pipeline);
* sizes: diffusion models work on multiples of 8 px (:func:`snap`); handlers run at the snapped
  size and resize the result back (Lanczos), so outputs have exactly the size asked for;
* :func:`run_img2img` (one image-to-image call) and :func:`enhance_regions` (img2img on face
  crops at the model's native resolution, pasted back through a feathered ellipse);
* :func:`foreground_alpha`: a semantic segmentation model's soft foreground probability.

torch and the model libraries are imported inside the functions, so importing a handler module
for its classical provider stays cheap.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.base import TaskContext
from gpu_consumers.handlers.classical import to_uint8
from gpu_consumers.handlers.face_detection import Box, feather_mask
from schemas.task_params import SEED_MAX, STEPS_MAX, STEPS_MIN

# Diffusion VAEs downsample by 8 (SD, SDXL, SVD); sizes are snapped to a multiple of it.
SIZE_MULTIPLE = 8

# --------------------------------------------------------------------------- seeds


def resolve_seed(seed: int | None) -> int:
    """The task's seed, or a fresh random one in the schema's range (0 .. 2**63 - 1)."""
    return secrets.randbelow(SEED_MAX + 1) if seed is None else int(seed)


def torch_generator(device: str, seed: int) -> Any:
    import torch

    return torch.Generator(device=device).manual_seed(seed)


# --------------------------------------------------------------------------- progress


class ModelProgress:
    """Progress over ``total`` units of work; each unit is a pipeline call or a plain step."""

    def __init__(self, ctx: TaskContext, total: float) -> None:
        self._ctx = ctx
        self._total = max(float(total), 1e-9)
        self._done = 0.0

    def _report(self, done: float) -> None:
        self._ctx.progress(min(done / self._total, 1.0))

    def advance(self, units: float = 1.0) -> None:
        """A non-pipeline step finished: report it, then stop if the user cancelled."""
        self._done = min(self._done + units, self._total)
        self._report(self._done)
        self._ctx.cancel.raise_if_cancelled()

    @contextmanager
    def phase(self, units: float = 1.0) -> Iterator[Callable[..., dict[str, Any]]]:
        """``callback_on_step_end`` for one pipeline call worth ``units``."""
        start = self._done

        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]):
            steps = max(int(getattr(pipe, "num_timesteps", 0) or 1), 1)
            self._report(start + units * min((step + 1) / steps, 1.0))
            self._ctx.cancel.raise_if_cancelled()
            return callback_kwargs

        yield on_step_end
        self._done = min(start + units, self._total)

    def finish(self) -> None:
        """The output is encoded: 100%, no cancel check (the work is complete)."""
        self._done = self._total
        self._ctx.progress(1.0)


# --------------------------------------------------------------------------- provider_config

Check = Callable[[str, Any], Any]


def int_in(low: int, high: int) -> Check:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidInput(f"provider_config.{key} must be an integer in {low}..{high}, got {value!r}")
        return value

    return check


def float_in(low: float, high: float) -> Check:
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise InvalidInput(f"provider_config.{key} must be a number in {low}..{high}, got {value!r}")
        return float(value)

    return check


def text(max_chars: int) -> Check:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or len(value) > max_chars:
            raise InvalidInput(f"provider_config.{key} must be a string of at most {max_chars} "
                               f"characters")
        return value

    return check


# What every diffusion provider passes through: step count, classifier-free guidance (30 is far
# beyond any useful value) and a negative prompt (CLIP reads 77 tokens; 1000 chars is plenty).
DIFFUSION_OPTIONS: dict[str, Check] = {
    "num_inference_steps": int_in(STEPS_MIN, STEPS_MAX),
    "guidance_scale": float_in(0.0, 30.0),
    "negative_prompt": text(1000),
}


def provider_options(config: Mapping[str, Any] | None, allowed: Mapping[str, Check]) -> dict[str, Any]:
    """The task's ``provider_config`` checked against ``allowed`` (key -> validator)."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise InvalidInput(f"provider_config: unknown key(s) {', '.join(unknown)}; this provider "
                           f"accepts {', '.join(sorted(allowed))}")
    return {key: allowed[key](key, value) for key, value in config.items()}


# --------------------------------------------------------------------------- sizes


def snap(pixels: float, multiple: int = SIZE_MULTIPLE) -> int:
    """The nearest multiple of ``multiple`` (at least one)."""
    return max(multiple, int(round(pixels / multiple)) * multiple)


def requested_size(width: int | None, height: int | None, src_w: int, src_h: int) -> tuple[int, int]:
    """Both given: exactly that; one: the other keeps the aspect; none: the source size."""
    if width is not None and height is not None:
        return width, height
    if width is not None:
        return width, max(1, round(src_h * width / src_w))
    if height is not None:
        return max(1, round(src_w * height / src_h)), height
    return src_w, src_h


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos resize of a uint8 H x W (x C) array to ``size`` = (width, height)."""
    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def native_side(pipe: Any) -> int:
    """The resolution a diffusion model was trained at (SD 512, SDXL 1024, tiny offline 64)."""
    sample = pipe.unet.config.sample_size
    sample = sample[0] if isinstance(sample, list | tuple) else sample
    return int(sample) * int(getattr(pipe, "vae_scale_factor", 8))


def denoise_steps(steps: int, strength: float) -> int | None:
    """img2img runs ``int(steps * strength)`` steps; raise ``steps`` until that is at least one.
    None when even the maximum step count would run no step (the pass changes nothing)."""
    if int(STEPS_MAX * strength) < 1:
        return None
    while int(steps * strength) < 1:
        steps += 1
    return steps


def pipe_image(output: Any) -> np.ndarray:
    return np.asarray(output.images[0].convert("RGB"))


def run_img2img(pipe: Any, rgb: np.ndarray, *, prompt: str, strength: float, steps: int,
                generator: Any, on_step_end: Callable[..., Any], call_kwargs: Mapping[str, Any],
                work_size: tuple[int, int] | None = None) -> np.ndarray:
    """One img2img call at ``work_size`` (default: the input snapped to multiples of 8); the
    result is resized back to the input's size."""
    height, width = rgb.shape[:2]
    work = work_size or (snap(width), snap(height))
    output = pipe(prompt=prompt, image=Image.fromarray(resize(rgb, work)), strength=strength,
                  num_inference_steps=steps, generator=generator, output_type="pil",
                  callback_on_step_end=on_step_end, **call_kwargs)
    return resize(pipe_image(output), (width, height))


def enhance_regions(pipe: Any, rgb: np.ndarray, boxes: list[Box], *, prompt: str, strength: float,
                    steps: int, generator: Any, progress: ModelProgress,
                    call_kwargs: Mapping[str, Any]) -> np.ndarray:
    """img2img on each box, upscaled so its long side is the model's native resolution (where a
    diffusion model draws its best faces), then pasted back through a feathered ellipse that is
    0 on the box border: pixels outside the boxes never change. One progress unit per box."""
    out = rgb.copy()
    side = native_side(pipe)
    for x, y, w, h in boxes:
        crop = out[y:y + h, x:x + w]
        scale = side / max(w, h)
        with progress.phase() as on_step_end:
            new = run_img2img(pipe, np.ascontiguousarray(crop), prompt=prompt, strength=strength,
                              steps=steps, generator=generator, on_step_end=on_step_end,
                              call_kwargs=call_kwargs, work_size=(snap(w * scale), snap(h * scale)))
        mask = feather_mask(w, h)[..., None]
        base = crop.astype(np.float32)
        out[y:y + h, x:x + w] = to_uint8(base + mask * (new.astype(np.float32) - base))
    return out


# --------------------------------------------------------------------------- segmentation


def foreground_alpha(segmenter: Any, rgb: np.ndarray, device: str) -> np.ndarray:
    """Soft foreground probability (float32 H x W in 0..1): 1 - P(any background label), from the
    model's logits resized bilinearly to the image."""
    import torch

    model = segmenter.model
    inputs = segmenter.processor(images=Image.fromarray(rgb), return_tensors="pt")
    pixels = inputs["pixel_values"].to(device, dtype=model.dtype)
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    logits = torch.nn.functional.interpolate(logits.float(), size=rgb.shape[:2], mode="bilinear",
                                             align_corners=False)
    background = logits.softmax(dim=1)[0, list(segmenter.background_ids)].sum(dim=0)
    return (1.0 - background).clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
