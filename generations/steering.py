"""How an AGENTIC retry differs from the attempts before it: pure, deterministic, per task type.

:func:`adjust` makes the parameters of attempt ``n`` (>= 2) from the previous attempt's, the
evaluator's reasons for rejecting it, and every parameter set the shot has already tried. Every
retry is a genuinely different try **for every provider of its task type**, the weight-free
``classical`` ones included (they ignore seeds and prompts):

1. **seed** — a new one, where the type has one (``_KNOBS``);
2. **dials** (:data:`DIALS`) — the amounts a type's providers all read (IMAGE_ADJUSTER's four
   adjustments, FACE/DETAIL ``strength``, REFINE ``upscale_steps`` / ``upscale_denoise``,
   BACKGROUND_FIX ``blend_strength``, EDITING ``strength``). The reasons steer them: each clause
   of a reason is read for :class:`Signal` keywords ("underexposed" / "too dark" → DARK,
   "blurry" / "not sharp" → SOFT, ...), and a dial moves one ``step`` up for a signal in its ``up`` set, down for
   one in its ``down`` set (both: it stays). Each change of a dial's direction halves its step (a
   bisection between the too-little and too-much already seen), and a move that lands on a
   setting already tried goes half as far again (twice at most). When no signal moved a dial of
   a type that needs one (``explore``: the types with a weight-free provider), or the move still
   repeats a tried setting, the type's *explore dial* walks away from attempt 1's value: +1, -1,
   +2, -2 ... steps, the first value in range not tried yet;
3. **diffusion** — attempt 3 also gets more denoising steps and a little more guidance (values in
   :mod:`generations.agentic`);
4. **prompt** — a type whose model provider reads a prompt gets it revised with the reasons from
   attempt 2 on (:func:`revise_prompt`, or the deployment's ``revise`` hook). IMAGE_ADJUSTER is
   the exception: its reasons steer the numbers, which add to whatever its guidance asks for, so
   its prompt is left as the caller wrote it.

Only a dial that moves is written; the others keep their value (None stays None, so the handler's
default still applies).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from schemas.enums import TaskType
from schemas.task_params import SEED_MAX, STEPS_MAX, TaskParams

__all__ = ["DIALS", "Dial", "PromptReviser", "Signal", "adjust", "derive_seed", "prompt_field",
           "revise_prompt", "signals"]

PromptReviser = Callable[[str, Sequence[str]], str]
"""``(prompt, reasons) -> revised prompt``: the hook for an LLM-written revision."""

# The GENERATION handler's production step count when provider_config has none.
STEPS_FALLBACK = 30
# 1.5x the steps (at least +10): more steps remove residual noise and soft detail.
STEPS_FACTOR, STEPS_MIN_INCREASE = 1.5, 10
# Guidance when none is set (the usual SD/SDXL range is 5..7.5); +1 follows the prompt a little
# more closely; capped at 12, above which images oversaturate and clip.
GUIDANCE_FALLBACK, GUIDANCE_INCREASE, GUIDANCE_CAP = 7.0, 1.0, 12.0
# A reversed or repeated move goes half as far, at most this many times, before exploring.
HALVINGS = 2
# Direction changes halve a dial's step, at most this many times (0.15 -> 0.009 at most).
MAX_HALVINGS = 4


class Signal(StrEnum):
    """What a rejection reason says is wrong, as far as a parameter can fix it."""

    DARK = "dark"
    BRIGHT = "bright"
    FLAT = "flat"
    HARSH = "harsh"
    DULL = "dull"
    GARISH = "garish"
    TOO_WARM = "too_warm"
    TOO_COOL = "too_cool"
    CAST = "cast"
    SOFT = "soft"
    NOISY = "noisy"
    CUTOUT = "cutout"
    OFF_PROMPT = "off_prompt"


# Keywords per signal, looked for in the lower-cased reason (the quality evaluator's names, the
# VLM judge's free text, a person's words). The first signal whose keyword a clause contains
# wins, so the specific ones come first ("clipped highlights: overexposed" is BRIGHT, not DARK).
_SIGNAL_WORDS: tuple[tuple[Signal, tuple[str, ...]], ...] = (
    (Signal.BRIGHT, ("overexposed", "too bright", "clipped highlights", "blown", "too light")),
    (Signal.DARK, ("underexposed", "too dark", "clipped shadows", "dark")),
    (Signal.HARSH, ("too much contrast", "too contrasty", "harsh")),
    (Signal.FLAT, ("low contrast", "faded", "flat", "washed out", "blank frame", "lacks contrast")),
    (Signal.GARISH, ("oversaturated", "over-saturated", "too saturated", "garish")),
    (Signal.DULL, ("dull", "desaturated", "colourless", "colorless", "lifeless", "muted")),
    (Signal.TOO_WARM, ("too warm", "too yellow", "too orange")),
    (Signal.TOO_COOL, ("too cool", "too cold", "too blue")),
    (Signal.CAST, ("colour cast", "color cast")),
    (Signal.CUTOUT, ("cut-out", "cutout", "halo", "fringe", "seam")),
    (Signal.SOFT, ("blurry", "blur", "not sharp", "soft", "lacks detail", "lack of detail",
                   "out of focus", "partly rendered")),
    (Signal.NOISY, ("noisy", "noise", "artefact", "artifact", "banding", "over-processed",
                    "oversharpen", "over-sharpen", "plastic")),
    (Signal.OFF_PROMPT, ("off-prompt", "does not match", "doesn't match", "ignores the prompt")),
)


# A judge's sentence may name several faults: each clause gives at most one signal.
_CLAUSES = re.compile(r"[;,.]\s|\band\b|\bbut\b|\bwhile\b")


def signals(reasons: Iterable[str]) -> tuple[Signal, ...]:
    """The signals of ``reasons``, in order, each once: per clause of a reason, the first signal
    one of whose keywords it contains."""
    found: list[Signal] = []
    for reason in reasons:
        for clause in _CLAUSES.split(reason.lower()):
            hit = next((s for s, words in _SIGNAL_WORDS if any(w in clause for w in words)), None)
            if hit is not None and hit not in found:
                found.append(hit)
    return tuple(found)


@dataclass(frozen=True)
class Dial:
    """A parameter every provider of a type reads, and which signals move it which way."""

    field: str
    default: float  # what the handler uses when the field is None
    low: float
    high: float
    step: float
    up: frozenset[Signal] = frozenset()
    down: frozenset[Signal] = frozenset()
    integer: bool = False

    def clamp(self, value: float) -> float:
        value = min(self.high, max(self.low, value))
        return float(round(value)) if self.integer else round(value, 4)


def _dial(name: str, default: float, low: float, high: float, step: float, up: Iterable[Signal] = (),
          down: Iterable[Signal] = (), integer: bool = False) -> Dial:
    return Dial(name, default, low, high, step, frozenset(up), frozenset(down), integer)


S = Signal
# Adjustment steps of 0.15 (of the -1..1 range): visible, and two moves stay well inside it.
_ADJUSTER = (_dial("brightness", 0.0, -1.0, 1.0, 0.15, [S.DARK], [S.BRIGHT]),
             _dial("contrast", 0.0, -1.0, 1.0, 0.15, [S.FLAT], [S.HARSH]),
             _dial("saturation", 0.0, -1.0, 1.0, 0.15, [S.DULL], [S.GARISH]),
             _dial("warmth", 0.0, -1.0, 1.0, 0.15, [S.TOO_COOL], [S.TOO_WARM]))
# Strengths move by 0.15 of 0..1; the handlers' own defaults (0.5) are the starting point.
_STRENGTH = _dial("strength", 0.5, 0.05, 1.0, 0.15, [S.SOFT], [S.NOISY])

# Per type: the dials, and the explore dial's field (None: the type's providers all read a seed,
# so a new seed is already a different try). The defaults mirror gpu_consumers/handlers.
DIALS: dict[TaskType, tuple[tuple[Dial, ...], str | None]] = {
    TaskType.IMAGE_ADJUSTER: (_ADJUSTER, "contrast"),
    TaskType.FACE_ENHANCER: ((_STRENGTH,), "strength"),
    TaskType.DETAIL_ENHANCER: ((_STRENGTH,), "strength"),
    # upscale_steps: classical sharpening passes (one per 10 steps), diffusion steps otherwise.
    TaskType.REFINE: ((_dial("upscale_steps", 10, 1, STEPS_MAX, 10, [S.SOFT], integer=True),
                       _dial("upscale_denoise", 0.3, 0.0, 1.0, 0.1, [S.NOISY])), "upscale_steps"),
    # A wide feather shows a rim of the old background: a bad cut-out narrows it.
    TaskType.BACKGROUND_FIX: ((_dial("blend_strength", 0.5, 0.0, 1.0, 0.15, down=[S.CUTOUT]),),
                              "blend_strength"),
    # EDITING's default strength depends on the tool; 0.75 is the middle of them.
    TaskType.EDITING: ((_dial("strength", 0.75, 0.1, 1.0, 0.1, [S.OFF_PROMPT], [S.NOISY]),), None),
}


class _Knobs(NamedTuple):
    seed: str | None  # "field": params.seed; "config": provider_config["seed"]; None: no seed
    steps: bool  # provider_config num_inference_steps accepted
    guidance: bool  # provider_config guidance_scale accepted
    prompt: str | None  # the field holding the prompt
    revise: bool  # the reasons revise that prompt (a model provider reads it)


# What each task type's providers accept (gpu_consumers/handlers/*: classical providers ignore
# provider_config, the model ones whitelist these keys). Keep in step with the handlers.
_KNOBS: dict[TaskType, _Knobs] = {
    TaskType.GENERATION: _Knobs("field", True, True, "prompt", True),
    TaskType.VIDEO_GENERATION: _Knobs("field", True, False, None, False),
    TaskType.EDITING: _Knobs("config", True, True, "prompt", True),
    TaskType.BACKGROUND_FIX: _Knobs("config", True, True, "background_prompt", True),
    TaskType.REFINE: _Knobs("config", False, True, "upscale_prompt", True),
    TaskType.FACE_ENHANCER: _Knobs("config", True, True, "prompt", True),
    TaskType.DETAIL_ENHANCER: _Knobs("config", True, True, "prompt", True),
    TaskType.IMAGE_ADJUSTER: _Knobs(None, False, False, "prompt", False),
    TaskType.BACKGROUND_REMOVE: _Knobs(None, False, False, None, False),
    TaskType.LLM_INTERACTION: _Knobs(None, False, False, None, False),
}


def prompt_field(task_type: TaskType) -> str | None:
    """The parameter holding a task type's prompt (what an evaluator compares the image with)."""
    return _KNOBS[task_type].prompt


# --------------------------------------------------------------------------- the prompt

# Evaluator reason keywords → what the revised prompt asks for (reasons of processors/evaluators).
_REVISIONS: tuple[tuple[str, str], ...] = (
    ("blurry", "sharp focus, crisp fine detail"),
    ("overexposed", "balanced exposure, no blown highlights"),
    ("underexposed", "balanced exposure, detailed shadows"),
    ("clipped", "balanced exposure, no clipped highlights or shadows"),
    ("dull", "rich natural colours"),
    ("cut-out", "clean isolated subject with crisp edges"),
    ("off-prompt", "faithful to every detail of the description"),  # the clip evaluators' reason
)


def revise_prompt(prompt: str, reasons: Sequence[str]) -> str:
    """The deterministic revision: append what each reason asks for (the first keyword of
    ``_REVISIONS`` it contains), each phrase once, so a second revision does not repeat the
    first; a reason with no known keyword becomes "avoid: <reason>"."""
    additions: list[str] = []
    for reason in reasons:
        low = reason.lower()
        fix = next((fix for key, fix in _REVISIONS if key in low), f"avoid: {reason.split(' (')[0]}")
        additions += [fix] * (fix not in additions)
    fresh = [a for a in additions if a.lower() not in prompt.lower()]
    return ", ".join([prompt.strip()] * bool(prompt.strip()) + fresh) or prompt


# --------------------------------------------------------------------------- seeds


def derive_seed(rng_seed: int, attempt: int) -> int:
    """A seed in 0..SEED_MAX that depends only on ``(rng_seed, attempt)``."""
    digest = hashlib.blake2b(f"{rng_seed}\x1f{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & SEED_MAX


# --------------------------------------------------------------------------- the dials


def _setting(values: dict[str, Any], dials: Sequence[Dial]) -> tuple[float, ...]:
    """The dials' effective values (None read as the handler's default)."""
    return tuple(float(values[d.field]) if values.get(d.field) is not None else d.default for d in dials)


def _reversals(path: Sequence[float], sign: int) -> int:
    """How often a dial's value has changed direction along ``path``, counting the next move."""
    signs = [1 if b > a else -1 for a, b in zip(path, path[1:]) if b != a] + [sign]
    return sum(1 for a, b in zip(signs, signs[1:]) if a != b)


def _steer(values: dict[str, Any], dials: Sequence[Dial], found: Sequence[Signal],
           history: Sequence[tuple[float, ...]]) -> bool:
    """Move the dials the signals name; True if the result is a setting not tried yet. Each
    change of direction halves a dial's step (a bisection between a too-little and a too-much
    that were both tried), and a move that lands on a tried setting goes half as far again."""
    named = set(found)
    moves = {d.field: int(bool(d.up & named)) - int(bool(d.down & named)) for d in dials}
    if not any(moves.values()):
        return False
    start, tried = _setting(values, dials), set(history)
    steps = [d.step / 2 ** min(_reversals([h[i] for h in history], moves[d.field]), MAX_HALVINGS)
             for i, d in enumerate(dials)]
    for halving in range(HALVINGS + 1):
        candidate = tuple(d.clamp(v + moves[d.field] * step / 2 ** halving)
                          for d, v, step in zip(dials, start, steps))
        if candidate != start and candidate not in tried:
            _write(values, dials, start, candidate)
            return True
    return False


def _explore(values: dict[str, Any], dials: Sequence[Dial], field: str, first: tuple[float, ...],
             tried: set[tuple[float, ...]]) -> None:
    """Walk the explore dial away from attempt 1's value: +1, -1, +2, -2 ... steps."""
    index = next(i for i, d in enumerate(dials) if d.field == field)
    dial, current = dials[index], _setting(values, dials)
    for k in range(1, int((dial.high - dial.low) / dial.step) + 2):
        for sign in (1, -1):
            value = first[index] + sign * k * dial.step
            if not dial.low <= value <= dial.high:
                continue
            candidate = (*current[:index], dial.clamp(value), *current[index + 1:])
            if candidate not in tried:
                _write(values, dials, current, candidate)
                return
    # Every value of the dial was tried (only with very many attempts): the seed is the change.


def _write(values: dict[str, Any], dials: Sequence[Dial], old: tuple[float, ...],
           new: tuple[float, ...]) -> None:
    for dial, before, after in zip(dials, old, new):
        if before != after:
            values[dial.field] = int(after) if dial.integer else after


# --------------------------------------------------------------------------- adjust


def adjust(params: TaskParams, attempt: int, reasons: Sequence[str], rng_seed: int, *,
           revise: PromptReviser | None = None, tried: Sequence[TaskParams] = ()) -> TaskParams:
    """The parameters of attempt ``attempt`` (>= 2), from the previous attempt's ``params``, the
    reasons it was rejected for, and ``tried``: the parameters of the shot's earlier attempts
    (attempt 1 first; ``params`` itself counts as tried)."""
    if attempt < 2:
        raise ValueError(f"adjust makes attempt 2 or later, got {attempt}")
    knobs = _KNOBS[params.task_type]
    values: dict[str, Any] = params.model_dump()
    config: dict[str, Any] = dict(values.get("provider_config") or {})
    old_seed = values.get("seed") if knobs.seed == "field" else config.get("seed")
    seed = derive_seed(rng_seed, attempt)
    seed = (seed + 1) & SEED_MAX if seed == old_seed else seed
    if knobs.seed == "field":
        values["seed"] = seed
    elif knobs.seed == "config":
        config["seed"] = seed
    if attempt == 3:
        if knobs.steps:
            steps = int(config.get("num_inference_steps") or STEPS_FALLBACK)
            config["num_inference_steps"] = min(STEPS_MAX, max(steps + STEPS_MIN_INCREASE,
                                                               round(steps * STEPS_FACTOR)))
        if knobs.guidance:
            guidance = float(config.get("guidance_scale") or GUIDANCE_FALLBACK)
            config["guidance_scale"] = min(GUIDANCE_CAP, guidance + GUIDANCE_INCREASE)
    found = signals(reasons)
    dials, explore = DIALS.get(params.task_type, ((), None))
    if dials:
        history = [*tried, params] if not tried or tried[-1] != params else list(tried)
        path = [_setting(p.model_dump(), dials) for p in history]
        done = set(path)
        if params.task_type is TaskType.IMAGE_ADJUSTER and Signal.CAST in found:
            warmth = float(values.get("warmth") or 0.0)
            if warmth:  # a cast the loop can name the direction of: halve the warmth
                values["warmth"] = round(warmth / 2, 4)
        moved = _steer(values, dials, found, path) or _setting(values, dials) not in done
        if not moved and explore is not None:
            _explore(values, dials, explore, _setting(history[0].model_dump(), dials), done)
    if knobs.revise and knobs.prompt and reasons:
        values[knobs.prompt] = (revise or revise_prompt)(values.get(knobs.prompt) or "", reasons)
    if config or values.get("provider_config") is not None:
        values["provider_config"] = config
    return type(params).model_validate(values)
