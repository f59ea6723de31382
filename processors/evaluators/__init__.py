"""Evaluator plugins of the AGENTIC loop, chosen by ``evaluation_provider`` (see ``base``)."""

from processors.evaluators.base import (
    AUTO,
    Evaluation,
    EvaluationContext,
    Evaluator,
    EvaluatorError,
    EvaluatorRegistry,
    EvaluatorSettings,
    TaskEvaluator,
    UnknownEvaluator,
    default_registry,
)
from processors.evaluators.quality import QualityEvaluator
from processors.evaluators.scripted import ScriptedEvaluator, ScriptExhausted
from processors.evaluators.vlm import UnparseableJudgement, VlmJudge, parse_judgement

__all__ = [
    "AUTO", "Evaluation", "EvaluationContext", "Evaluator", "EvaluatorError", "EvaluatorRegistry",
    "EvaluatorSettings", "QualityEvaluator", "ScriptExhausted", "ScriptedEvaluator", "TaskEvaluator",
    "UnknownEvaluator", "UnparseableJudgement", "VlmJudge", "default_registry", "parse_judgement",
]
