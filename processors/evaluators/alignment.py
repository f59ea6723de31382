"""Prompt alignment: how well the image matches its prompt, by CLIP image-text similarity.

The processors hold no model, so the similarity is an LLM_INTERACTION task on the worker's
``clip`` provider: ``prompt`` is the attempt's prompt and ``provider_config = {"image_urls":
[url]}`` (plus ``"model"`` when one is configured). Its ``result_text`` is one JSON object
``{"similarity": <cosine, -1..1>, "score": <0..1>, "model": <id>}``; ``score`` is the worker's
calibrated alignment, and it is the evaluation's score.

Two evaluators:

* :class:`ClipAlignment` (``clip``): the alignment alone; an attempt below
  :data:`OFF_PROMPT_BELOW` gets the reason ``"off-prompt (alignment 0.31)"``;
* :class:`QualityAndAlignment` (``quality+clip``, ``auto``'s choice where CLIP is configured and
  no VLM): a :class:`~processors.evaluators.base.CombinedEvaluator` whose in-process part is the
  weight-free :class:`~processors.evaluators.quality.QualityEvaluator`. The score is the
  geometric mean ``sqrt(quality * alignment)``: an image has to be both well made and what was
  asked for, so either one near 0 sinks it (sharp noise that matches nothing, or a fine photo of
  the wrong thing), while, unlike ``min``, the other signal still ranks two attempts that share
  the same weakness (``ACCEPT_BEST`` picks by score). Both evaluations' reasons and signals are
  kept, plus ``quality`` and ``alignment``. An attempt with no prompt (BACKGROUND_REMOVE) has
  nothing to align with: quality alone scores it.

Available when a CLIP model or provider type is configured (``EvaluatorSettings.clip_model``,
``clip_provider_type``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from processors.evaluators.base import (
    Evaluation,
    EvaluationContext,
    Evaluator,
    EvaluatorError,
    EvaluatorSettings,
    UnparseableJudgement,
    task_config,
)
from processors.evaluators.quality import QualityEvaluator
from schemas.task_params import LlmInteractionParams

CLIP_PROVIDER = "clip"
# Below this alignment the image counts as off-prompt: sqrt(1.0 * 0.49) = 0.7, so an alignment
# under ~0.5 keeps even a flawless image under the AGENTIC default threshold (0.7).
OFF_PROMPT_BELOW = 0.5


def parse_alignment(text: str) -> tuple[float, float]:
    """``(score in 0..1, cosine similarity)`` from the clip task's answer; raise
    UnparseableJudgement for anything but the contract's JSON object."""
    try:
        data: Any = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise UnparseableJudgement(f"the clip answer is not JSON: {text[:200]!r}") from exc
    values = []
    for key in ("score", "similarity"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UnparseableJudgement(f"the clip answer has no numeric {key!r}: {text[:200]!r}")
        values.append(float(value))
    score, similarity = values
    return min(1.0, max(0.0, score)), similarity


class ClipAlignment:
    """``evaluation_provider = "clip"``: the prompt alignment alone, as an LLM_INTERACTION task."""

    name = "clip"

    def __init__(self, settings: EvaluatorSettings) -> None:
        if not self.available(settings):
            raise EvaluatorError("the clip evaluator needs EvaluatorSettings.clip_model or "
                                 "clip_provider_type (COMPUTE_EVALUATOR_CLIP_MODEL / _PROVIDER)")
        self._model = settings.clip_model
        self._provider_type = settings.clip_provider_type or CLIP_PROVIDER

    @staticmethod
    def available(settings: EvaluatorSettings) -> bool:
        return bool(settings.clip_model or settings.clip_provider_type)

    def applies(self, context: EvaluationContext) -> bool:
        return bool((context.prompt or "").strip())

    def request(self, image_url: str, context: EvaluationContext = EvaluationContext()) -> LlmInteractionParams:
        if not self.applies(context):
            raise EvaluatorError(f"a {context.task_type.value} attempt has no prompt to align the image with")
        return LlmInteractionParams(prompt=(context.prompt or "").strip(), provider_type=self._provider_type,
                                    provider_config=task_config(image_url, self._model))

    def parse(self, text: str, context: EvaluationContext = EvaluationContext()) -> Evaluation:
        score, similarity = parse_alignment(text)
        reasons = (f"off-prompt (alignment {score:.2f})",) if score < OFF_PROMPT_BELOW else ()
        return Evaluation(score, reasons, {"alignment": score, "clip_similarity": similarity}, self.name)


class QualityAndAlignment(ClipAlignment):
    """``evaluation_provider = "quality+clip"``: the weight-free score and the alignment,
    combined by their geometric mean (see the module doc)."""

    name = "quality+clip"

    def __init__(self, settings: EvaluatorSettings, local: Evaluator | None = None) -> None:
        super().__init__(settings)
        self.local: Evaluator = local or QualityEvaluator()

    def combine(self, judged: Evaluation, local: Evaluation) -> Evaluation:
        quality = local.score
        alignment = judged.score
        signals = {**local.signals, **judged.signals, "quality": quality, "alignment": alignment}
        return Evaluation(math.sqrt(quality * alignment), (*local.reasons, *judged.reasons),
                          signals, self.name)
