"""The evaluator plugin interface and the registry ``evaluation_provider`` names are looked up in.

Two kinds of evaluator:

* :class:`Evaluator` scores an image in-process (``evaluate(image, context)``): the weight-free
  ``quality`` evaluator, the ``scripted`` one of tests and demos;
* :class:`TaskEvaluator` needs a task round-trip (the ``vlm`` judge and the ``clip`` alignment
  run as LLM_INTERACTION tasks): ``request(image_url, context)`` builds the task's parameters and
  ``parse(text, context)`` turns the task's answer into an :class:`Evaluation`;
* :class:`CombinedEvaluator` is a task evaluator with an in-process part too (``quality+clip``):
  when its task answers, the orchestrator fetches the image, scores it with ``local`` and
  ``combine`` merges the two evaluations.

A judge's answer with no score raises :class:`UnparseableJudgement`; the orchestrator then scores
the image with the weight-free evaluator (:data:`WEIGHT_FREE`, or a combined evaluator's
``local``) and says so in the reasons.

:meth:`EvaluatorRegistry.resolve` picks by name; ``auto`` takes the first *available*
model-based evaluator in registration order (its model is configured in
:class:`EvaluatorSettings`), else the first weight-free one. :func:`default_registry` registers
``vlm``, ``quality+clip``, ``clip``, ``quality``: ``auto`` is the VLM judge where one is
configured, else quality combined with CLIP alignment where CLIP is, else ``quality``. Settings
are read once (:meth:`EvaluatorSettings.from_env`) and passed down.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from generations.evaluation import Evaluation, EvaluationContext
from schemas.errors import ComputeError
from schemas.task_params import LlmInteractionParams

AUTO = "auto"
# The weight-free evaluator an unparseable judgement falls back to.
WEIGHT_FREE = "quality"


class EvaluatorError(ComputeError):
    """Root of the evaluators' errors."""


class UnknownEvaluator(EvaluatorError):
    """``evaluation_provider`` names no registered evaluator, or one this deployment has not
    configured. Use ``auto`` or one of the names in the message."""


class UnparseableJudgement(EvaluatorError):
    """The judge's answer holds no score. Check the model and prompt; the processors fall back to
    the weight-free evaluator for this attempt."""


@runtime_checkable
class Evaluator(Protocol):
    name: str

    def evaluate(self, image: Image.Image, context: EvaluationContext) -> Evaluation: ...


@runtime_checkable
class TaskEvaluator(Protocol):
    name: str

    def request(self, image_url: str, context: EvaluationContext) -> LlmInteractionParams: ...

    def parse(self, text: str, context: EvaluationContext) -> Evaluation: ...


@runtime_checkable
class CombinedEvaluator(TaskEvaluator, Protocol):
    """A task evaluator whose verdict also needs an in-process score of the same image.

    The processors hold no model, so the task part is asked for first (``request``); when it
    answers, the orchestrator fetches the attempt's image, runs ``local.evaluate`` on it in its
    executor and calls ``combine(parse(text), local_evaluation)``. ``applies(context)`` False
    (nothing for the task part to judge, e.g. no prompt): ``local`` alone scores the attempt."""

    local: Evaluator

    def applies(self, context: EvaluationContext) -> bool: ...

    def combine(self, judged: Evaluation, local: Evaluation) -> Evaluation: ...


def task_config(image_url: str, model: str | None) -> dict[str, Any]:
    """The judge task's ``provider_config``: the image, and the model only when one is configured."""
    return {"image_urls": [image_url], **({"model": model} if model else {})}


@dataclass(frozen=True)
class EvaluatorSettings:
    """Deployment configuration of the model-based evaluators (None: not configured).

    A model-based evaluator is available when its model or its provider type is set. The model
    id, when set, goes into the task (the worker refuses a task naming a model it does not
    serve); a provider type alone judges with whatever model that provider's worker serves."""

    vlm_model: str | None = None  # model id the LLM_INTERACTION provider serves, e.g. a Qwen2-VL
    vlm_provider_type: str | None = None  # None: the worker's default (transformers)
    clip_model: str | None = None  # the CLIP provider's model, e.g. openai/clip-vit-large-patch14
    clip_provider_type: str | None = None  # None: "clip"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> EvaluatorSettings:
        """``COMPUTE_EVALUATOR_VLM_MODEL``, ``_VLM_PROVIDER``, ``_CLIP_MODEL``, ``_CLIP_PROVIDER``."""
        def get(name: str) -> str | None:
            return environ.get(f"COMPUTE_EVALUATOR_{name}") or None

        return cls(vlm_model=get("VLM_MODEL"), vlm_provider_type=get("VLM_PROVIDER"),
                   clip_model=get("CLIP_MODEL"), clip_provider_type=get("CLIP_PROVIDER"))


Factory = Callable[[EvaluatorSettings], "Evaluator | TaskEvaluator"]


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    model_based: bool
    available: Callable[[EvaluatorSettings], bool]


class EvaluatorRegistry:
    """Evaluator factories by name. :func:`default_registry` builds the standard one."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def register(self, name: str, factory: Factory, *, model_based: bool = False,
                 available: Callable[[EvaluatorSettings], bool] = lambda s: True) -> None:
        if name == AUTO:
            raise ValueError(f"{AUTO!r} is reserved for the automatic choice")
        self._entries[name] = _Entry(factory, model_based, available)

    def names(self) -> list[str]:
        return list(self._entries)

    def resolve(self, provider: str, settings: EvaluatorSettings = EvaluatorSettings()) -> Evaluator | TaskEvaluator:
        """The evaluator ``provider`` names; ``auto``: the first available model-based one in
        registration order, else the first weight-free one."""
        if provider == AUTO:
            ranked = sorted(self._entries.items(), key=lambda kv: not kv[1].model_based)
            for _name, entry in ranked:
                if entry.available(settings):
                    return entry.factory(settings)
            raise UnknownEvaluator("no evaluator is available; register one")
        entry = self._entries.get(provider)
        if entry is None:
            raise UnknownEvaluator(f"unknown evaluation_provider {provider!r}; known: "
                                   f"{', '.join([AUTO, *self._entries])}")
        if not entry.available(settings):
            raise UnknownEvaluator(f"evaluation_provider {provider!r} is not configured in this "
                                   f"deployment (see EvaluatorSettings); use {AUTO!r}")
        return entry.factory(settings)


def default_registry() -> EvaluatorRegistry:
    """In ``auto``'s order of preference: ``vlm`` (available when a VLM is configured: it judges
    quality and intent in one task), ``quality+clip`` (when CLIP is: the weight-free score and
    the prompt alignment combined), ``clip`` (alignment alone; never ``auto``'s choice, since
    ``quality+clip`` is available whenever it is) and ``quality`` (weight-free). ``scripted`` is
    not registered: tests register their own with its scores."""
    from processors.evaluators.alignment import ClipAlignment, QualityAndAlignment
    from processors.evaluators.quality import QualityEvaluator
    from processors.evaluators.vlm import VlmJudge

    registry = EvaluatorRegistry()
    registry.register(VlmJudge.name, VlmJudge, model_based=True, available=VlmJudge.available)
    registry.register(QualityAndAlignment.name, QualityAndAlignment, model_based=True,
                      available=ClipAlignment.available)
    registry.register(ClipAlignment.name, ClipAlignment, model_based=True, available=ClipAlignment.available)
    registry.register(WEIGHT_FREE, lambda settings: QualityEvaluator())
    return registry


def describe(evaluation: Evaluation) -> dict[str, Any]:
    """A JSON-friendly view (for logs and the CLI)."""
    return {"score": round(evaluation.score, 4), "reasons": list(evaluation.reasons),
            "signals": {k: round(v, 4) for k, v in evaluation.signals.items()},
            "evaluator": evaluation.evaluator}
