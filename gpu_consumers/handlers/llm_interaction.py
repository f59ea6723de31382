"""LLM_INTERACTION: text from a causal language model; the text is the result.

One provider, ``transformers`` (:class:`TransformersLlmInteraction`), on the registry's ``llm``
role (Qwen2.5-Instruct in production, a tiny Qwen2 with a local ChatML tokenizer offline).

* the conversation is ``system_prompt`` (if any) then ``prompt``, rendered by the tokenizer's own
  chat template with the generation prompt appended;
* ``max_tokens`` -> ``max_new_tokens`` (None: 512), also capped by the room left in the model's
  context window (a prompt that fills it is INVALID_INPUT); ``extra["finish_reason"]`` is
  ``stop`` (the model ended) or ``length`` (the budget ran out);
* ``temperature``: 0 -> greedy decoding (deterministic, no seed); > 0 -> sampling at that
  temperature; None -> 0.7 (Qwen2.5-Instruct's own default). Sampling draws from torch's RNG
  seeded with ``provider_config.seed`` (None: random, recorded in the result), inside a forked RNG
  state so no other work on the worker is affected;
* ``provider_config``: ``seed``, ``top_p`` (0..1], ``top_k`` (0..1000), ``repetition_penalty``
  (1..2); anything else is INVALID_INPUT.

Progress is reported after every generated token (as a fraction of ``max_new_tokens``), and the
cancel token is checked there, so a cancelled task stops within one token.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handler import HandlerResult, OutputFile, TaskContext
from gpu_consumers.handlers.model_common import (
    ModelProgress,
    float_in,
    int_in,
    provider_options,
    resolve_seed,
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
}


def messages(params: LlmInteractionParams) -> list[dict[str, str]]:
    system = [{"role": "system", "content": params.system_prompt}] if params.system_prompt else []
    return [*system, {"role": "user", "content": params.prompt}]


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

        # 1. check inputs
        options = provider_options(params.provider_config, OPTIONS)
        ctx.cancel.raise_if_cancelled()

        # 2. load from the warm cache
        cache = ModelCache.for_context(ctx)
        model, tokenizer = cache.llm()

        # 3. prepare: the chat, the token budget, the decoding settings
        inputs = tokenizer.apply_chat_template(messages(params), add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True).to(ctx.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        window = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
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
            outputs=[output], model=cache.model_id(Role.LLM), provider="transformers", seed=seed,
            text=text,
            extra={"prompt_tokens": prompt_tokens, "completion_tokens": int(len(new_tokens)),
                   "max_new_tokens": max_new, "finish_reason": "stop" if stopped else "length",
                   "temperature": temperature, **options},
        )
