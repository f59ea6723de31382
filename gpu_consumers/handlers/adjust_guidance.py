"""IMAGE_ADJUSTER's ``prompt`` ("Adjustment guidance") turned into adjustment values; pure.

Two interpreters give ``{field: value}`` over the handler's four fields (``brightness``,
``contrast``, ``saturation``, ``warmth``, each -1..1, 0 = unchanged):

* :func:`parse_answer` reads a language model's answer **strictly**: the whole answer (a code
  fence around it is allowed) must be one JSON object with at least one of the four keys, no other
  key, and numbers in -1..1 (booleans, strings, NaN are refused). Anything else raises
  :class:`UnusableAnswer` with the reason.
* :func:`interpret_keywords` is the deterministic reading, used when there is no model or its
  answer is unusable. The guidance is split into clauses at ``, ; . ! ?``; each phrase of
  :data:`PHRASES` found in a clause (longest first, each word used once) moves its field by
  ``0.2`` in its direction; the last intensity word before it in its clause scales that by 0.5
  ("slightly", "a bit", "a touch", ...) or 2 ("much", "very", "a lot", ...); a negation just
  before the phrase ("not", "no", "don't", "without"; one word may sit between) drops it. "black and white" / "greyscale" /
  "monochrome" set saturation to -1. Values add up and are clipped to -1..1.

:func:`combine` applies the precedence: the explicit parameters are the base and the guidance is
added to them (``clip(explicit + guided)``), so "brightness 0.1, prompt 'a bit brighter'" gives
0.2, and an AGENTIC retry that moves an explicit value still moves the result.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

FIELDS = ("brightness", "contrast", "saturation", "warmth")
# One keyword step: a clear but moderate change (the seed's example uses 0.05..0.1 per field).
KEYWORD_STEP = 0.2
WEAKER, STRONGER = 0.5, 2.0

# (field, direction, phrases): the phrases a person (or an evaluator) uses for each change.
PHRASES: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("brightness", 1, ("brighter", "brighten", "lighter", "lighten", "more light", "more exposure",
                       "increase exposure", "increase the exposure", "increase brightness",
                       "more brightness", "too dark", "underexposed", "lift the shadows")),
    ("brightness", -1, ("darker", "darken", "dimmer", "less bright", "less exposure", "reduce exposure",
                        "reduce the exposure", "reduce brightness", "decrease brightness", "too bright",
                        "overexposed", "moodier")),
    ("contrast", 1, ("more contrast", "higher contrast", "increase contrast", "increase the contrast",
                     "punchier", "punchy", "more punch", "crisper", "more depth", "too flat", "faded",
                     "washed out", "washed-out")),
    ("contrast", -1, ("less contrast", "lower contrast", "reduce contrast", "reduce the contrast",
                      "decrease contrast", "softer", "flatter", "gentler", "too harsh", "too contrasty")),
    ("saturation", 1, ("more saturated", "more saturation", "saturate", "increase saturation",
                       "more vivid", "vivid", "vibrant", "more colourful", "more colorful",
                       "richer colours", "richer colors", "more colour", "more color", "too dull",
                       "dull colours", "dull colors")),
    ("saturation", -1, ("less saturated", "less saturation", "desaturate", "desaturated",
                        "reduce saturation", "decrease saturation", "muted", "more muted",
                        "less colourful", "less colorful", "subdued", "too saturated",
                        "oversaturated")),
    ("warmth", 1, ("warmer", "warm", "warm up", "more warmth", "increase warmth", "golden", "more yellow", "sunnier", "too cold",
                   "too cool", "too blue")),
    ("warmth", -1, ("cooler", "cool", "cool down", "less warmth", "reduce warmth", "colder", "cold", "bluer", "more blue", "too warm",
                    "too yellow", "too orange")),
)
GREYSCALE = ("black and white", "black & white", "black-and-white", "greyscale", "grayscale",
             "monochrome")
WEAK_WORDS = ("slightly", "slight", "a bit", "a little", "a touch", "a tad", "subtly", "subtle",
              "gently", "somewhat", "mildly", "a hint")
STRONG_WORDS = ("much", "a lot", "very", "way", "strongly", "significantly", "really",
                "dramatically", "considerably", "far", "heavily")
NEGATIONS = ("not", "no", "don't", "dont", "without", "never")

_LOOKUP = {phrase: (name, sign) for name, sign, phrases in PHRASES for phrase in phrases}
_PHRASE_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(
    [*_LOOKUP, *GREYSCALE], key=len, reverse=True)) + r")(?![\w-])")
_CLAUSE_RE = re.compile(r"[,;.!?\n]+")
_WEAK_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in WEAK_WORDS) + r")\b")
_STRONG_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in STRONG_WORDS) + r")\b")
_NEGATION_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in NEGATIONS) + r")\s+(?:\w+\s+)?$")
_FENCE_RE = re.compile(r"^```[\w-]*\s*(.*?)\s*```$", re.DOTALL)


class UnusableAnswer(ValueError):
    """The model's answer is not the JSON object asked for; the keyword reading decides."""


@dataclass(frozen=True)
class Interpretation:
    """The values the guidance asks for, and the phrases that asked (keyword reading)."""

    values: dict[str, float]
    matched: tuple[str, ...] = field(default=())


def _clip(value: float) -> float:
    return round(min(1.0, max(-1.0, value)), 4)


def _intensity(before: str) -> float:
    """The scale the last intensity word before a phrase (in its clause) gives it."""
    weak = [m.end() for m in _WEAK_RE.finditer(before)]
    strong = [m.end() for m in _STRONG_RE.finditer(before)]
    if not weak and not strong:
        return 1.0
    return WEAKER if max(weak, default=-1) > max(strong, default=-1) else STRONGER


def interpret_keywords(guidance: str) -> Interpretation:
    """The deterministic reading of ``guidance`` (see the module doc)."""
    text = guidance.lower().replace("’", "'")
    # "and" inside "black and white" must not split its clause.
    for name in GREYSCALE:
        text = text.replace(name, "greyscale")
    totals: dict[str, float] = {}
    matched: list[str] = []
    for clause in _CLAUSE_RE.split(text):
        for hit in _PHRASE_RE.finditer(clause):
            phrase, before = hit.group(1), clause[:hit.start()]
            if _NEGATION_RE.search(before):
                continue
            matched.append(phrase)
            if phrase in GREYSCALE:
                totals["saturation"] = -1.0
                continue
            name, sign = _LOOKUP[phrase]
            totals[name] = totals.get(name, 0.0) + sign * KEYWORD_STEP * _intensity(before)
    return Interpretation({k: _clip(v) for k, v in totals.items()}, tuple(matched))


def parse_answer(text: str) -> dict[str, float]:
    """The model's answer as values; :class:`UnusableAnswer` if it is not exactly what was asked."""
    body = text.strip()
    fenced = _FENCE_RE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise UnusableAnswer(f"not JSON ({exc.__class__.__name__}: {str(exc)[:80]})") from None
    if not isinstance(data, dict):
        raise UnusableAnswer(f"a JSON {type(data).__name__}, not an object")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UnusableAnswer(f"unknown key(s) {', '.join(map(repr, unknown))}")
    if not data:
        raise UnusableAnswer("an empty object")
    values: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UnusableAnswer(f"{key} is {value!r}, not a number")
        if not -1.0 <= value <= 1.0:
            raise UnusableAnswer(f"{key} is {value}, outside -1..1")
        values[key] = float(value)
    return values


def combine(explicit: Mapping[str, float | None], guided: Mapping[str, float]) -> dict[str, float]:
    """Every field's final value: the explicit one (None: 0) plus the guidance, clipped to -1..1."""
    return {name: _clip(float(explicit.get(name) or 0.0) + guided.get(name, 0.0)) for name in FIELDS}


# What the language model is asked (the LLM_INTERACTION handler's chat, temperature 0).
SYSTEM_PROMPT = (
    "You turn a photo editor's instruction into colour adjustments. Answer with one JSON object "
    "and nothing else. Use only the keys brightness, contrast, saturation and warmth (leave out "
    "those the instruction does not ask to change). Each value is a number from -1 to 1: 0 keeps "
    "the image as it is, 0.1 is slight, 0.3 is clear, 0.6 is strong; negative values go the other "
    "way (darker, flatter, more muted, cooler). Example: for 'a bit brighter and warmer' answer "
    '{"brightness": 0.1, "warmth": 0.1}')
USER_PROMPT = "Instruction: {guidance}"
ANSWER_MAX_TOKENS = 96  # four keys with values fit in ~40 tokens; room for a code fence
