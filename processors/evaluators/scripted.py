"""An evaluator that returns scores from a given list: for tests and demos.

Each entry is a score or ``(score, reasons)``; the i-th call returns the i-th entry. Running out
raises :class:`ScriptExhausted` (a test that evaluates more often than it scripted is wrong).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from processors.evaluators.base import Evaluation, EvaluationContext, EvaluatorError

Entry = float | tuple[float, Sequence[str]]


class ScriptExhausted(EvaluatorError):
    """The scripted evaluator was asked for more scores than it was given."""


class ScriptedEvaluator:
    name = "scripted"

    def __init__(self, script: Sequence[Entry]) -> None:
        self._script = [(e, ()) if isinstance(e, int | float) else (e[0], tuple(e[1])) for e in script]
        self.calls = 0

    def next_evaluation(self) -> Evaluation:
        """The next scripted evaluation, without an image (pure scenario tests)."""
        if self.calls >= len(self._script):
            raise ScriptExhausted(f"scripted evaluator has {len(self._script)} score(s), "
                                  f"asked for number {self.calls + 1}")
        score, reasons = self._script[self.calls]
        self.calls += 1
        if not reasons and score < 1.0:
            reasons = (f"scripted score {score:.2f}",)
        return Evaluation(float(score), reasons, {"scripted": float(score)}, self.name)

    def evaluate(self, image: Image.Image | None = None, context: EvaluationContext = EvaluationContext()) -> Evaluation:
        return self.next_evaluation()
