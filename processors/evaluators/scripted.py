"""Evaluators that return scripted scores: for tests and demos.

* :class:`ScriptedEvaluator` (a list): each entry is a score or ``(score, reasons)``; the i-th
  call returns the i-th entry. Running out raises :class:`ScriptExhausted` (a test that evaluates
  more often than it scripted is wrong). For in-process tests that register it themselves.
* :class:`PromptScriptedEvaluator` (prompt prefix → list): attempt *n* of a shot whose
  ``context.prompt`` starts with a key gets that key's *n*-th entry (the longest matching key
  wins). It keeps no state, so a replayed evaluation gets the same score, and one processors
  app can run several scenarios at once, one ``generated_prompt`` each. The processors register
  it as ``scripted`` when ``PROCESSORS_EVALUATOR_SCRIPT`` is set (JSON, e.g.
  ``{"retry-scenario": [0.4, 0.9], "accept-scenario": [[0.95, ["fine"]]]}``).

A scripted score below 1 without reasons gets the reason ``"scripted score 0.40"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PIL import Image

from processors.evaluators.base import Evaluation, EvaluationContext, EvaluatorError

Entry = float | tuple[float, Sequence[str]]


class ScriptExhausted(EvaluatorError):
    """The scripted evaluator was asked for more scores than it was given."""


class NoScript(EvaluatorError):
    """No script key is a prefix of the attempt's prompt: give the generation a
    ``generated_prompt`` that starts with one of the keys of ``PROCESSORS_EVALUATOR_SCRIPT``."""


def _entry(entry: Entry | Sequence[object]) -> tuple[float, tuple[str, ...]]:
    if isinstance(entry, int | float) and not isinstance(entry, bool):
        return float(entry), ()
    score, reasons = entry  # type: ignore[misc]
    return float(score), tuple(str(r) for r in reasons)  # type: ignore[union-attr]


def _evaluation(score: float, reasons: tuple[str, ...], name: str) -> Evaluation:
    if not reasons and score < 1.0:
        reasons = (f"scripted score {score:.2f}",)
    return Evaluation(score, reasons, {"scripted": score}, name)


class ScriptedEvaluator:
    name = "scripted"

    def __init__(self, script: Sequence[Entry]) -> None:
        self._script = [_entry(e) for e in script]
        self.calls = 0

    def next_evaluation(self) -> Evaluation:
        """The next scripted evaluation, without an image (pure scenario tests)."""
        if self.calls >= len(self._script):
            raise ScriptExhausted(f"scripted evaluator has {len(self._script)} score(s), "
                                  f"asked for number {self.calls + 1}")
        score, reasons = self._script[self.calls]
        self.calls += 1
        return _evaluation(score, reasons, self.name)

    def evaluate(self, image: Image.Image | None = None, context: EvaluationContext = EvaluationContext()) -> Evaluation:
        return self.next_evaluation()


class PromptScriptedEvaluator:
    """Scores by prompt prefix and attempt number (see the module doc); stateless."""

    name = "scripted"

    def __init__(self, scripts: Mapping[str, Sequence[Entry]]) -> None:
        self._scripts = {prefix: [_entry(e) for e in entries] for prefix, entries in scripts.items()}

    def script_for(self, prompt: str | None) -> tuple[str, list[tuple[float, tuple[str, ...]]]]:
        prompt = prompt or ""
        matches = [prefix for prefix in self._scripts if prompt.startswith(prefix)]
        if not matches:
            raise NoScript(f"no evaluator script for the prompt {prompt[:80]!r}; scripted "
                           f"prefixes: {', '.join(map(repr, self._scripts)) or 'none'}")
        prefix = max(matches, key=len)
        return prefix, self._scripts[prefix]

    def evaluate(self, image: Image.Image | None = None, context: EvaluationContext = EvaluationContext()) -> Evaluation:
        prefix, script = self.script_for(context.prompt)
        if not 1 <= context.attempt <= len(script):
            raise ScriptExhausted(f"the script {prefix!r} has {len(script)} score(s), asked for "
                                  f"attempt {context.attempt}")
        score, reasons = script[context.attempt - 1]
        return _evaluation(score, reasons, self.name)
