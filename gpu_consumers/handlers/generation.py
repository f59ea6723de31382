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
  ``product2_lora_weight``: the weights of the adapters named ``subject``, ``product``, ``style``
  and ``product2`` (``ModelCache.apply_loras``: loaded once, switched with ``set_adapters``);
  None and 0 leave an adapter out, and with all of them None/0 LoRA is off (the output equals a
  run without LoRA). A weight for an adapter the deployment has not configured is INVALID_INPUT;
* ``reference_image_url`` + ``reference_image_strength``: the reference guides the image through
  an IP-Adapter whose scale is the strength (0 ignores the reference, 1 lets it dominate the
  prompt; None means 0.5, the usual balance). The strength alone, without an image, does nothing;
* ``provider_config``: ``num_inference_steps`` (1..150; default: the spec's option, else 30 in
  production and 2 offline), ``guidance_scale`` (0..30), ``negative_prompt``; any other key is
  INVALID_INPUT.
"""

from __future__ import annotations

from typing import ClassVar

from PIL import Image

from gpu_consumers.handler import HandlerResult, TaskContext
from gpu_consumers.handlers.classical import encode_image, to_picture
from gpu_consumers.handlers.model_common import (
    DIFFUSION_OPTIONS,
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
        options = provider_options(params.provider_config, DIFFUSION_OPTIONS)
        cache = ModelCache.for_context(ctx)
        weights = lora_weights(params)
        cache.check_loras(weights)
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
            pipe, loras=weights, low_memory=ctx.low_memory,
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

        # 6. return
        return HandlerResult(
            outputs=[encoded], model=cache.model_id(Role.TEXT_TO_IMAGE), provider="diffusers",
            seed=seed, width=params.width, height=params.height,
            extra={
                "num_inference_steps": steps,
                "working_size": list(work),
                "lora_weights": {k: v for k, v in weights.items() if v},
                "lora_switch_ms": None if switch is None else round(switch.switch_ms, 3),
                "reference_scale": strength if reference is not None else None,
                **options,
            },
        )
