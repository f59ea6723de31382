"""The model-based evaluator: a vision-language model judges the image, as an LLM_INTERACTION task.

The judge cannot run in the processors (they hold no model), so it is a :class:`TaskEvaluator`:

1. ``request(image_url, context)`` builds the LLM_INTERACTION parameters: the prompt below, a
   deterministic temperature of 0, the configured provider type (None: the worker's default,
   ``transformers``, which runs its ``vlm`` role when images are given) and
   ``provider_config = {"image_urls": [url]}`` plus ``"model"`` when one is configured (the worker
   refuses a model id it does not serve) — the worker fetches the image and shows it to the model;
2. the processors submit that task and wait for its COMPLETED ``result_text``;
3. ``parse(result_text, context)`` reads the score and reasons.

The model is asked for one JSON object ``{"score": <0..1>, "reasons": [...]}``. Parsing accepts
that object anywhere in the text (models like to wrap it in prose or a code fence) and, failing
that, a ``score: 0.8`` / ``8/10`` / ``80%`` pattern; a score on a 0..10 or 0..100 scale is
rescaled. Text with no score raises :class:`UnparseableJudgement` (the processors then fall back
to the weight-free evaluator and say so in the reasons).

Available only when a model or a provider type is configured (``EvaluatorSettings.vlm_model``,
``vlm_provider_type``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from processors.evaluators.base import Evaluation, EvaluationContext, EvaluatorError, EvaluatorSettings, UnparseableJudgement, task_config
from schemas.task_params import LlmInteractionParams

SYSTEM_PROMPT = (
    "You are a strict quality reviewer for commercial fashion and product photography. "
    "You judge one image and answer with JSON only."
)
PROMPT_TEMPLATE = (
    "Judge the attached image{intent}.\n"
    "Consider: sharpness and focus, exposure, colour, anatomy and hands, garment and product "
    "fidelity, artefacts, and how well it matches the intent.\n"
    'Answer with exactly one JSON object: {{"score": <number from 0 to 1>, "reasons": '
    '[<short phrases naming each problem, e.g. "blurry face", "distorted hands">]}}. '
    "Use 1 for a flawless, deliverable image and 0 for an unusable one."
)
# A JSON verdict is a few short phrases; 256 tokens leaves room for a wordy model.
MAX_TOKENS = 256
# Judging should be repeatable: greedy decoding.
TEMPERATURE = 0.0

_JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)
_SCORE_PATTERNS = (
    re.compile(r"(-?\d+(?:\.\d+)?)\s*/\s*(10|100)\b"),
    re.compile(r"(-?\d+(?:\.\d+)?)\s*%"),
    re.compile(r"score\W{0,3}(-?\d+(?:\.\d+)?)", re.IGNORECASE),
)


def _unit(value: float, scale: float | None = None) -> float:
    """A score on 0..1, 0..10 or 0..100 (guessed from its size when no scale is given) in 0..1."""
    if scale is None:
        scale = 1.0 if value <= 1.0 else 10.0 if value <= 10.0 else 100.0
    return min(1.0, max(0.0, value / scale))


def parse_judgement(text: str) -> tuple[float, list[str]]:
    """``(score in 0..1, reasons)`` from the judge's text; raise UnparseableJudgement."""
    for match in _JSON_OBJECT.finditer(text):
        try:
            data: Any = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("score"), int | float) \
                and not isinstance(data["score"], bool):
            reasons = data.get("reasons") or []
            reasons = [str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)]
            return _unit(float(data["score"])), reasons
    for pattern in _SCORE_PATTERNS:
        found = pattern.search(text)
        if found:
            if pattern is _SCORE_PATTERNS[0]:
                return _unit(float(found.group(1)), float(found.group(2))), []
            if pattern is _SCORE_PATTERNS[1]:
                return _unit(float(found.group(1)), 100.0), []
            return _unit(float(found.group(1))), []
    raise UnparseableJudgement(f"no score in the judge's answer: {text[:200]!r}")


class VlmJudge:
    """``evaluation_provider = "vlm"``: a vision-language judge run as an LLM_INTERACTION task."""

    name = "vlm"

    def __init__(self, settings: EvaluatorSettings) -> None:
        if not self.available(settings):
            raise EvaluatorError("the vlm evaluator needs EvaluatorSettings.vlm_model or "
                                 "vlm_provider_type (COMPUTE_EVALUATOR_VLM_MODEL / _PROVIDER)")
        self._model = settings.vlm_model
        self._provider_type = settings.vlm_provider_type

    @staticmethod
    def available(settings: EvaluatorSettings) -> bool:
        return bool(settings.vlm_model or settings.vlm_provider_type)

    def request(self, image_url: str, context: EvaluationContext = EvaluationContext()) -> LlmInteractionParams:
        intent = f' made for the prompt "{context.prompt.strip()}"' if context.prompt else ""
        return LlmInteractionParams(
            prompt=PROMPT_TEMPLATE.format(intent=intent), system_prompt=SYSTEM_PROMPT,
            max_tokens=MAX_TOKENS, temperature=TEMPERATURE, provider_type=self._provider_type,
            provider_config=task_config(image_url, self._model),
        )

    def parse(self, text: str, context: EvaluationContext = EvaluationContext()) -> Evaluation:
        score, reasons = parse_judgement(text)
        return Evaluation(score, tuple(reasons), {"judge_score": score}, self.name)
