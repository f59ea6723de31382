"""GENERATION: a new image from a prompt, with LoRA weights and an optional reference image.

One provider, ``diffusers`` (:class:`DiffusersGeneration`): GENERATION has no weight-free method.
The text-to-image model is the registry's ``text_to_image`` role (SDXL in production, a tiny SD
offline), kept warm by the worker's :class:`~gpu_consumers.model_cache.ModelCache`.

Parameters:

* ``width`` x ``height``: the pipeline runs at the nearest multiples of 8 and the result is
  resized (Lanczos) to exactly the size asked for when they differ;
* ``seed``: a ``torch.Generator`` on the worker's device; None draws a random 63-bit seed, which
  the result records, so every image can be reproduced;
* ``subject_lora_weight``, ``product_lora_weight``, ``style_lora_weight``,
  ``product2_lora_weight``: the weights of the LoRA slots ``subject``, ``product``, ``style`` and
  ``product2`` (``ModelCache.apply_loras``: each adapter loaded once, switched with
  ``set_adapters``); None and 0 leave a slot out, and with all of them None/0 LoRA is off (the
  output equals a run without LoRA). Which LoRA a slot applies: the task's reference for it in
  ``provider_config.loras``, else the adapter the deployment configured for the slot
  (``COMPUTE_LORA_<SLOT>``); a weight for a slot with neither is INVALID_INPUT;
* ``reference_image_url`` + ``reference_image_strength``: the reference guides the image through
  an IP-Adapter whose scale is the strength (0 ignores the reference, 1 lets it dominate the
  prompt; None means 0.5, the usual balance). The strength alone, without an image, does nothing;
* ``provider_config``: ``num_inference_steps`` (1..150; default: the spec's option, else 30 in
  production and 2 offline), ``guidance_scale`` (0..30), ``negative_prompt``, ``loras`` (slot ->
  LoRA reference, e.g. ``{"subject": "anna", "style": "hf:studio/minimal"}``; the planner sets
  it from the catalog's ``lora_ref``). A reference is resolved by
  ``ModelRegistry.resolve_lora_ref``: a folder or ``.safetensors`` file under the LoRA root
  (``COMPUTE_LORA_ROOT``), or in production a hub repo matching ``COMPUTE_LORA_ALLOWED_REPOS``;
  safetensors only. A malformed, unknown or refused reference is INVALID_INPUT naming it. Any
  other key is INVALID_INPUT.
"""

from __future__ import annotations

from typing import Any, ClassVar

from PIL import Image

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.base import HandlerResult, TaskContext
from gpu_consumers.handlers.classical import encode_image, to_picture
from gpu_consumers.handlers.model_common import (
    DIFFUSION_OPTIONS,
    Check,
    ModelProgress,
    pipe_image,
    provider_options,
    resize,
    resolve_seed,
    snap,
    torch_generator,
)
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import LORA_ADAPTERS, Role
from schemas.enums import TaskType
from schemas.task_params import GenerationParams

DEFAULT_PROVIDER = "diffusers"
# IP-Adapter scale when a reference image comes without a strength: the usual balance between
# the prompt and the image.
DEFAULT_REFERENCE_STRENGTH = 0.5


def lora_refs(key: str, value: Any) -> dict[str, str]:
    """``provider_config.loras``: an object of LoRA slot -> reference (a non-empty string; what
    it may name is the registry's to decide)."""
    if not isinstance(value, dict):
        raise InvalidInput(f"provider_config.{key} must be an object of LoRA slot -> reference")
    unknown = sorted(str(k) for k in value if k not in LORA_ADAPTERS)
    if unknown:
        raise InvalidInput(f"provider_config.{key}: unknown LoRA slot(s) {', '.join(unknown)} "
                           f"(slots: {', '.join(LORA_ADAPTERS)})")
    bad = sorted(k for k, v in value.items() if not isinstance(v, str) or not v)
    if bad:
        raise InvalidInput(f"provider_config.{key}: the reference of {', '.join(bad)} must be a "
                           f"non-empty string")
    return dict(value)


GENERATION_OPTIONS: dict[str, Check] = {**DIFFUSION_OPTIONS, "loras": lora_refs}


def lora_weights(params: GenerationParams) -> dict[str, float | None]:
    """The task's adapter weights by adapter name (the order of ``LORA_ADAPTERS``)."""
    values = (params.subject_lora_weight, params.product_lora_weight, params.style_lora_weight,
              params.product2_lora_weight)
    return dict(zip(LORA_ADAPTERS, values, strict=True))


# --------------------------------------------------------------------------- model providers


class DiffusersGeneration:
    task_type: ClassVar[TaskType] = TaskType.GENERATION
    providers: ClassVar[tuple[str, ...]] = ("diffusers",)

    def run(self, params: GenerationParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        options = provider_options(params.provider_config, GENERATION_OPTIONS)
        refs = options.pop("loras", None) or {}
        cache = ModelCache.for_context(ctx)
        weights = lora_weights(params)
        slots = cache.check_loras(weights, refs)
        reference = None
        if params.reference_image_url is not None:
            reference = to_picture(ctx.fetch.fetch_image(params.reference_image_url, mode="RGB"),
                                   "reference_image_url")
        ctx.cancel.raise_if_cancelled()

        # 2. load from the warm cache; switch this task's adapters
        pipe = cache.text_to_image()
        strength = (DEFAULT_REFERENCE_STRENGTH if params.reference_image_strength is None
                    else params.reference_image_strength)
        call_kwargs = cache.prepare(
            pipe, loras=weights, lora_refs=refs, low_memory=ctx.low_memory,
            reference=None if reference is None else Image.fromarray(reference.rgb),
            reference_scale=strength)
        switch = cache.last_lora_switch

        # 3. prepare
        seed = resolve_seed(params.seed)
        steps = options.pop("num_inference_steps", None) or cache.default_steps(Role.TEXT_TO_IMAGE)
        work = (snap(params.width), snap(params.height))
        progress = ModelProgress(ctx, 1)

        # 4. run
        with progress.phase() as on_step_end:
            output = pipe(prompt=params.prompt, width=work[0], height=work[1],
                          num_inference_steps=steps, generator=torch_generator(ctx.device, seed),
                          output_type="pil", callback_on_step_end=on_step_end,
                          **options, **call_kwargs)
        rgb = resize(pipe_image(output), (params.width, params.height))

        # 5. encode
        encoded = encode_image(rgb)
        progress.finish()

        # 6. return (lora_refs: the reference each weighted slot applied, only when the task
        # named one; a slot not listed used the deployment's adapter)
        used = {slot: lora.reference for slot, lora in slots.items() if lora.reference is not None}
        return HandlerResult(
            outputs=[encoded], model=cache.model_id(Role.TEXT_TO_IMAGE), provider="diffusers",
            seed=seed, width=params.width, height=params.height,
            extra={
                "num_inference_steps": steps,
                "working_size": list(work),
                "lora_weights": {k: v for k, v in weights.items() if v},
                **({"lora_refs": used} if used else {}),
                "lora_switch_ms": None if switch is None else round(switch.switch_ms, 3),
                "reference_scale": strength if reference is not None else None,
                **options,
            },
        )
