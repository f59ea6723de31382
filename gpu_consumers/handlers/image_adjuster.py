"""IMAGE_ADJUSTER: brightness, contrast, saturation and warmth, exact and deterministic, and the
``prompt`` ("Adjustment guidance") turned into those same four values.

Providers of this type live here, one class each:

* ``transformers`` (:class:`TransformersImageAdjuster`, the default): the guidance is read by the
  registry's ``llm`` role (the model LLM_INTERACTION runs: Qwen2.5-Instruct in production, a tiny
  Qwen2 offline), asked for one JSON object of values at temperature 0
  (:mod:`.adjust_guidance` has the prompt); the answer is parsed strictly, and an unusable one
  (not exactly that JSON) falls back to the keyword reading below. The model is loaded only for a
  task that has a prompt;
* ``classical`` (:class:`ImageAdjusterHandler`, weight-free): the guidance is read by the
  documented keyword rules of :func:`.adjust_guidance.interpret_keywords` ("brighter", "too
  dark", "more contrast", "muted", "warmer", "a bit" / "much" ...).

Either way the guidance is never silently ignored: a prompt from which neither reading gets a
value is INVALID_INPUT (it names the words the rules know). **Precedence**: the explicit
parameters are the base and the guidance is added (``clip(explicit + guided, -1, 1)``). With no
prompt both providers run exactly the classical pixel math below, with no model, and report
provider ``classical``. Which path decided the values is in the result metadata: ``model`` is
``numpy-color-adjust`` (no prompt), ``numpy-color-adjust+keywords`` (the rules decided) or
``numpy-color-adjust+<llm model id>`` (the model decided). With a prompt the result has a second
output, ``guidance.json`` (``output_urls[1]``; ``extra["guidance"]`` too): the values applied, the
guidance's values, the matched phrases or the model's answer, and why an answer was unusable.

The pixel math: the image is taken as float32 RGB in [0, 1] (``x = v / 255``). Each parameter is
in -1..1 and 0 (or None) means "unchanged"; the steps run in this fixed order, each followed by a
clip to [0, 1] so the next step sees a valid image:

1. brightness ``b``:  ``x' = x * (1 + b)``              (b = -1 gives black)
2. contrast ``c``:    ``x' = (x - 0.5) * (1 + c) + 0.5``  (c = -1 gives flat mid-grey)
3. saturation ``s``:  ``Y = 0.299 R + 0.587 G + 0.114 B`` (Rec. 601 luma);
                      ``x' = Y + (x - Y) * (1 + s)``     (s = -1 gives greyscale)
4. warmth ``w``:      ``R' = R * (1 + 0.2 w)``, ``B' = B * (1 - 0.2 w)``, G unchanged

The result is rounded once to uint8 (``rint(x * 255)``, half to even). A step whose value is 0 is
skipped, so all-zero values return the input pixels exactly. The alpha channel, if any, is
copied unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.adjust_guidance import (
    ANSWER_MAX_TOKENS,
    FIELDS,
    SYSTEM_PROMPT,
    USER_PROMPT,
    UnusableAnswer,
    combine,
    interpret_keywords,
    parse_answer,
)
from gpu_consumers.handlers.base import HandlerResult, OutputFile, TaskContext
from gpu_consumers.handlers.classical import Picture, StepCounter, encode_image, load_picture, to_uint8
from schemas.enums import TaskType
from schemas.task_params import ImageAdjusterParams, LlmInteractionParams

DEFAULT_PROVIDER = "transformers"

# Rec. 601 luma weights (the same ones Pillow's convert("L") uses).
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Warmth shifts red up and blue down by at most 20%: a strong but not absurd colour cast at |w| = 1.
WARMTH_GAIN = 0.2
MODEL_NAME = "numpy-color-adjust"


def brightness(x: np.ndarray, b: float) -> np.ndarray:
    return x * np.float32(1.0 + b)


def contrast(x: np.ndarray, c: float) -> np.ndarray:
    return (x - np.float32(0.5)) * np.float32(1.0 + c) + np.float32(0.5)


def saturation(x: np.ndarray, s: float) -> np.ndarray:
    # Written out element-wise (not a matmul) so the float32 sum is the same on every CPU.
    r, g, b = LUMA_WEIGHTS
    luma = (x[..., 0] * r + x[..., 1] * g + x[..., 2] * b)[..., None]
    return luma + (x - luma) * np.float32(1.0 + s)


def warmth(x: np.ndarray, w: float) -> np.ndarray:
    gains = np.array([1.0 + WARMTH_GAIN * w, 1.0, 1.0 - WARMTH_GAIN * w], dtype=np.float32)
    return x * gains


# The fixed order of the steps, by parameter name.
ADJUSTMENTS = (
    ("brightness", brightness),
    ("contrast", contrast),
    ("saturation", saturation),
    ("warmth", warmth),
)


def adjust(rgb: np.ndarray, params: ImageAdjusterParams | Mapping[str, float | None],
           on_step: Callable[[], None] = lambda: None) -> np.ndarray:
    """Apply the non-zero adjustments (of ``params`` or a ``{field: value}`` map) to uint8 RGB."""
    get = params.get if isinstance(params, Mapping) else lambda name: getattr(params, name)
    active = [(name, fn, get(name)) for name, fn in ADJUSTMENTS if get(name)]
    if not active:
        return rgb  # the identity, exactly: nothing is converted or rounded
    x = rgb.astype(np.float32) / np.float32(255.0)
    for _name, fn, value in active:
        x = np.clip(fn(x, float(value)), 0.0, 1.0)
        on_step()
    return to_uint8(x, 255.0)


def explicit_values(params: ImageAdjusterParams) -> dict[str, float | None]:
    return {name: getattr(params, name) for name in FIELDS}


def keyword_guidance(guidance: str) -> tuple[dict[str, float], dict[str, Any]]:
    """The rules' values and what to record; INVALID_INPUT if they find nothing to change."""
    reading = interpret_keywords(guidance)
    if not reading.values:
        raise InvalidInput(
            f"prompt: no adjustment found in {guidance[:200]!r}; say what to change (brighter / "
            "darker, more / less contrast, more vivid / muted, warmer / cooler, black and white; "
            "'a bit' or 'much' for how far) or set brightness, contrast, saturation, warmth")
    return reading.values, {"decided_by": "keywords", "values": reading.values,
                            "matched": list(reading.matched)}


def _render(picture: Picture, values: Mapping[str, float], ctx: TaskContext, model: str, provider: str,
            prompt: str | None, guidance: dict[str, Any] | None,
            scale: Callable[[float], float] = lambda f: f) -> HandlerResult:
    """Stages 3-5 shared by both providers: the pixel math, the encoding, the result."""
    applied = {name: float(values[name]) for name in FIELDS if values.get(name)}
    steps = StepCounter(dataclasses.replace(ctx, progress=lambda f: ctx.progress(scale(f))),
                        len(applied) + 1)
    rgb = adjust(picture.rgb, applied, on_step=steps.step)
    outputs = [encode_image(rgb, picture.alpha)]
    extra: dict[str, Any] = {"applied": applied, "prompt": prompt}
    if guidance is not None:
        extra["guidance"] = guidance
        # The decision travels with the result (output_urls[1]): what the guidance became and why.
        record = {"prompt": prompt, "applied": applied, **guidance}
        outputs.append(OutputFile(json.dumps(record, sort_keys=True).encode(), "application/json", ".json"))
    steps.finish()
    return HandlerResult(outputs=outputs, model=model, provider=provider, seed=None,
                         width=picture.width, height=picture.height, extra=extra)


class ImageAdjusterHandler:
    """The weight-free provider: explicit values plus the keyword reading of the guidance."""

    task_type: ClassVar[TaskType] = TaskType.IMAGE_ADJUSTER
    providers: ClassVar[tuple[str, ...]] = ("classical",)

    def run(self, params: ImageAdjusterParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs (the ranges were checked by the params model)
        picture = load_picture(ctx, params.base_image_url, "base_image_url")
        ctx.cancel.raise_if_cancelled()

        # 2. prepare: the values (the guidance read by the rules, added to the explicit ones)
        if not (params.prompt or "").strip():  # no guidance (a blank one is none)
            return _render(picture, explicit_values(params), ctx, MODEL_NAME, "classical", None, None)
        guided, record = keyword_guidance(params.prompt)
        values = combine(explicit_values(params), guided)

        # 3-5. process, encode, return
        return _render(picture, values, ctx, f"{MODEL_NAME}+keywords", "classical", params.prompt, record)


# The language model's part of the progress bar (its answer streams token by token).
LLM_PROGRESS_SHARE = 0.5
# (LLM_INTERACTION params, ctx) -> (answer text, model id); tests pass a scripted one.
AnswerFn = Callable[[LlmInteractionParams, TaskContext], tuple[str, str]]


def llm_answer(params: LlmInteractionParams, ctx: TaskContext) -> tuple[str, str]:
    """The worker's language model answers, through the LLM_INTERACTION handler itself (its
    chat template, context-window check, greedy decoding, per-token cancel check)."""
    from gpu_consumers.handlers.llm_interaction import TransformersLlmInteraction

    result = TransformersLlmInteraction().run(params, ctx)
    return result.text or "", result.model


class TransformersImageAdjuster:
    """The default provider: the language model reads the guidance; the rules if it cannot."""

    task_type: ClassVar[TaskType] = TaskType.IMAGE_ADJUSTER
    providers: ClassVar[tuple[str, ...]] = ("transformers",)

    def __init__(self, answer: AnswerFn | None = None) -> None:
        self._answer = answer or llm_answer

    def run(self, params: ImageAdjusterParams, ctx: TaskContext) -> HandlerResult:
        # 1. check inputs
        picture = load_picture(ctx, params.base_image_url, "base_image_url")
        ctx.cancel.raise_if_cancelled()
        if not (params.prompt or "").strip():  # no guidance: the classical path exactly, no model
            return _render(picture, explicit_values(params), ctx, MODEL_NAME, "classical", None, None)

        # 2. ask the model (greedy: the same guidance gives the same values)
        question = LlmInteractionParams(prompt=USER_PROMPT.format(guidance=params.prompt),
                                        system_prompt=SYSTEM_PROMPT, max_tokens=ANSWER_MAX_TOKENS,
                                        temperature=0.0)
        share = dataclasses.replace(ctx, progress=lambda f: ctx.progress(LLM_PROGRESS_SHARE * f))
        try:
            text, llm_model = self._answer(question, share)
            refused = None
        except InvalidInput as exc:  # e.g. guidance longer than the model's context window
            text, llm_model, refused = "", "", f"the model could not be asked: {exc}"
        ctx.cancel.raise_if_cancelled()

        # 3. the values: the model's answer if usable, else the rules
        try:
            if refused:
                raise UnusableAnswer(refused)
            guided = parse_answer(text)
            record: dict[str, Any] = {"decided_by": "llm", "values": guided}
            model = f"{MODEL_NAME}+{llm_model}"
        except UnusableAnswer as exc:
            guided, record = keyword_guidance(params.prompt)
            record["llm_unusable"] = str(exc)
            model = f"{MODEL_NAME}+keywords"
        record.update(llm_model=llm_model, llm_answer=text[:500])
        values = combine(explicit_values(params), guided)

        # 4-6. process, encode, return
        return _render(picture, values, ctx, model, "transformers", params.prompt, record,
                       scale=lambda f: LLM_PROGRESS_SHARE + (1.0 - LLM_PROGRESS_SHARE) * f)
