"""LLM_INTERACTION: text from a language model (the result), or CLIP's prompt alignment.

``transformers`` (:class:`TransformersLlmInteraction`, the default provider) runs the registry's
``llm`` role (Qwen2.5-Instruct in production, a tiny Qwen2 with a local ChatML tokenizer offline),
or with images its ``vlm`` role (Qwen2.5-VL-Instruct in production, a tiny LLaVA offline; loaded
through ``AutoProcessor`` + ``AutoModelForImageTextToText``):

* the conversation is ``system_prompt`` (if any) then ``prompt``, rendered by the tokenizer's (or
  processor's) own chat template with the generation prompt appended; with images the user turn
  is one ``{"type": "image"}`` part per image, then the prompt as a text part, and the processor
  turns the images into the model's pixel inputs;
* ``provider_config.image_urls``: 1..4 image URLs, fetched and checked like every image input of
  the worker (:mod:`.vision_inputs`); a URL that is refused or is not an image is INVALID_INPUT.
  The result records the ``vlm`` model and ``extra["images"]`` (redacted URL, width, height);
* ``provider_config.model``: optional; it must name the model this worker serves for the role
  used (``ModelCache.model_id``; offline also the role's production id), else INVALID_INPUT;
* ``max_tokens`` -> ``max_new_tokens`` (None: 512), also capped by the room left in the model's
  context window (a prompt that fills it is INVALID_INPUT); ``extra["finish_reason"]`` is
  ``stop`` (the model ended) or ``length`` (the budget ran out);
* ``temperature``: 0 -> greedy decoding (deterministic, no seed); > 0 -> sampling at that
  temperature; None -> 0.7 (Qwen2.5-Instruct's own default). Sampling draws from torch's RNG
  seeded with ``provider_config.seed`` (None: random, recorded in the result), inside a forked RNG
  state so no other work on the worker is affected;
* ``provider_config`` also takes ``seed``, ``top_p`` (0..1], ``top_k`` (0..1000),
  ``repetition_penalty`` (1..2); anything else is INVALID_INPUT.

Progress is reported after every generated token (as a fraction of ``max_new_tokens``), and the
cancel token is checked there, so a cancelled task stops within one token.

``clip`` (:class:`ClipLlmInteraction`) scores how well one image matches ``prompt`` with the
registry's ``clip`` role (CLIP ViT-L/14 in production, a tiny CLIPModel offline):
``provider_config.image_urls`` is exactly one URL (same rules), ``model`` as above, nothing else.
The prompt is truncated to CLIP's 77-token window (``extra["prompt_truncated"]``). The result
text is the JSON object ``{"similarity": <cosine, -1..1>, "score": <0..1>, "model": <id>}``
(the mapping of similarity to score is in :mod:`.vision_inputs`), also stored as a ``.json``
file; ``extra`` holds the same numbers and ``images``. ``system_prompt``, ``max_tokens`` and
``temperature`` are not used.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.base import HandlerResult, OutputFile, TaskContext
from gpu_consumers.handlers.model_common import (
    ModelProgress,
    float_in,
    int_in,
    provider_options,
    resolve_seed,
)
from gpu_consumers.handlers.vision_inputs import (
    check_model,
    clip_alignment,
    fetch_images,
    image_urls,
    model_name,
)
from gpu_consumers.model_cache import ModelCache
from gpu_consumers.models import Role
from schemas.enums import TaskType
from schemas.task_params import SEED_MAX, SEED_MIN, LlmInteractionParams

DEFAULT_PROVIDER = "transformers"
DEFAULT_MAX_TOKENS = 512  # a long answer; max_tokens raises it up to the context window
DEFAULT_TEMPERATURE = 0.7  # Qwen2.5-Instruct's generation_config
OPTIONS = {
    "seed": int_in(SEED_MIN, SEED_MAX),
    "top_p": float_in(1e-6, 1.0),
    "top_k": int_in(0, 1000),
    "repetition_penalty": float_in(1.0, 2.0),
    "image_urls": image_urls(),
    "model": model_name,
}
CLIP_OPTIONS = {"image_urls": image_urls(1, 1), "model": model_name}


def messages(params: LlmInteractionParams, images: int = 0) -> list[dict[str, Any]]:
    """The chat; with images, content parts as processors' chat templates take them."""
    system: Any = params.system_prompt
    user: Any = params.prompt
    if images:
        system = [{"type": "text", "text": params.system_prompt}]
        user = [*({"type": "image"} for _ in range(images)), {"type": "text", "text": params.prompt}]
    chat = [{"role": "system", "content": system}] if params.system_prompt else []
    return [*chat, {"role": "user", "content": user}]


@contextmanager
def seeded(device: str, seed: int | None) -> Iterator[None]:
    """torch's global RNG seeded for this task only (CPU and the task's GPU), restored after."""
    import torch

    if seed is None:
        yield
        return
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class _TokenProgress:
    """A stopping criterion that never stops: progress per token, and the cancel check."""

    def __init__(self, progress: ModelProgress, max_new_tokens: int) -> None:
        self._progress = progress
        self._unit = 1.0 / max_new_tokens

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self._progress.advance(self._unit)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


# --------------------------------------------------------------------------- model providers


class TransformersLlmInteraction:
    task_type: ClassVar[TaskType] = TaskType.LLM_INTERACTION
    providers: ClassVar[tuple[str, ...]] = ("transformers",)

    def run(self, params: LlmInteractionParams, ctx: TaskContext) -> HandlerResult:
        import torch
        from transformers import StoppingCriteriaList

        # 1. check inputs; fetch the images (the worker's input rules)
        options = provider_options(params.provider_config, OPTIONS)
        urls = options.pop("image_urls", None)
        role = Role.VLM if urls else Role.LLM
        cache = ModelCache.for_context(ctx)
        model_id = check_model(cache, role, options.pop("model", None))
        images = fetch_images(ctx, urls or [])
        ctx.cancel.raise_if_cancelled()

        # 2. load from the warm cache; 3. prepare: the chat (and pixels), the budget, decoding
        if images:
            model, processor = cache.vlm()
            tokenizer = processor.tokenizer
            chat = processor.apply_chat_template(messages(params, len(images)),
                                                 add_generation_prompt=True, tokenize=False)
            inputs = processor(images=[i.image for i in images], text=[chat], return_tensors="pt")
            inputs = inputs.to(ctx.device, dtype=model.dtype)  # casts only the pixel values
        else:
            model, tokenizer = cache.llm()
            inputs = tokenizer.apply_chat_template(messages(params), add_generation_prompt=True,
                                                   return_tensors="pt", return_dict=True).to(ctx.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        text_config = model.config.get_text_config()
        window = int(getattr(text_config, "max_position_embeddings", 0) or 0) or None
        room = None if window is None else window - prompt_tokens
        if room is not None and room < 1:
            raise InvalidInput(f"the prompt is {prompt_tokens} tokens; the model's context window "
                               f"is {window}: shorten the prompt or the system prompt")
        max_new = params.max_tokens or DEFAULT_MAX_TOKENS
        if room is not None:
            max_new = min(max_new, room)
        temperature = DEFAULT_TEMPERATURE if params.temperature is None else params.temperature
        sampling = temperature > 0
        seed = resolve_seed(options.pop("seed", None)) if sampling else None
        config = copy.deepcopy(model.generation_config)
        config.max_new_tokens = max_new
        config.do_sample = sampling
        if sampling:
            config.temperature = temperature
            for key, value in options.items():
                setattr(config, key, value)
        else:  # greedy: sampling knobs (the model's defaults or the task's) have no meaning
            config.temperature = config.top_p = config.top_k = None
            if "repetition_penalty" in options:
                config.repetition_penalty = options["repetition_penalty"]
        if config.pad_token_id is None:
            pad = tokenizer.pad_token_id
            config.pad_token_id = tokenizer.eos_token_id if pad is None else pad
        progress = ModelProgress(ctx, 1)

        # 4. run: one token per step
        with seeded(ctx.device, seed), torch.no_grad():
            out = model.generate(**inputs, generation_config=config,
                                 stopping_criteria=StoppingCriteriaList([_TokenProgress(progress, max_new)]))
        new_tokens = out[0, prompt_tokens:]
        text = tokenizer.decode(new_tokens, skip_special_tokens=True)
        eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        stopped = len(new_tokens) > 0 and int(new_tokens[-1]) in eos

        # 5. encode
        output = OutputFile(text.encode("utf-8"), "text/plain", ".txt")
        progress.finish()

        # 6. return
        return HandlerResult(
            outputs=[output], model=model_id, provider="transformers", seed=seed, text=text,
            extra={"prompt_tokens": prompt_tokens, "completion_tokens": int(len(new_tokens)),
                   "max_new_tokens": max_new, "finish_reason": "stop" if stopped else "length",
                   "temperature": temperature, **options,
                   **({"images": [i.describe() for i in images]} if images else {})},
        )


class ClipLlmInteraction:
    """CLIP's image-prompt alignment (see the module doc)."""

    task_type: ClassVar[TaskType] = TaskType.LLM_INTERACTION
    providers: ClassVar[tuple[str, ...]] = ("clip",)

    def run(self, params: LlmInteractionParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs; fetch the image
        options = provider_options(params.provider_config, CLIP_OPTIONS)
        if "image_urls" not in options:
            raise InvalidInput("provider clip needs provider_config.image_urls: a list of exactly "
                               "1 image URL")
        cache = ModelCache.for_context(ctx)
        model_id = check_model(cache, Role.CLIP, options.get("model"))
        [image] = fetch_images(ctx, options["image_urls"])

        # 2. load from the warm cache
        model, processor = cache.clip()
        progress = ModelProgress(ctx, 1)

        # 3. prepare and 4. run: one forward pass of both encoders
        alignment = clip_alignment(model, processor, params.prompt, image.image, ctx.device)

        # 5. encode
        verdict = {"similarity": alignment.similarity, "score": alignment.score, "model": model_id}
        text = json.dumps(verdict)
        output = OutputFile(text.encode("utf-8"), "application/json", ".json")
        progress.finish()

        # 6. return
        return HandlerResult(
            outputs=[output], model=model_id, provider="clip", text=text,
            extra={"similarity": alignment.similarity, "score": alignment.score,
                   "images": [image.describe()], "prompt_tokens": alignment.prompt_tokens,
                   "max_prompt_tokens": alignment.max_prompt_tokens,
                   "prompt_truncated": alignment.truncated},
        )
