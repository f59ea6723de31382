"""Evaluator plugins of the AGENTIC loop, chosen by ``evaluation_provider`` (see ``base``)."""

from processors.evaluators.alignment import ClipAlignment, QualityAndAlignment, parse_alignment
from processors.evaluators.base import (
    AUTO,
    WEIGHT_FREE,
    CombinedEvaluator,
    Evaluation,
    EvaluationContext,
    Evaluator,
    EvaluatorError,
    EvaluatorRegistry,
    EvaluatorSettings,
    TaskEvaluator,
    UnknownEvaluator,
    UnparseableJudgement,
    default_registry,
)
from processors.evaluators.quality import QualityEvaluator
from processors.evaluators.scripted import ScriptedEvaluator, ScriptExhausted
from processors.evaluators.vlm import VlmJudge, parse_judgement

__all__ = [
    "AUTO", "WEIGHT_FREE", "ClipAlignment", "CombinedEvaluator", "Evaluation", "EvaluationContext",
    "Evaluator", "EvaluatorError", "EvaluatorRegistry", "EvaluatorSettings", "QualityAndAlignment",
    "QualityEvaluator", "ScriptExhausted", "ScriptedEvaluator", "TaskEvaluator", "UnknownEvaluator",
    "UnparseableJudgement", "VlmJudge", "default_registry", "parse_alignment", "parse_judgement",
]
