"""The evaluator plugins: the weight-free quality signals, the VLM judge's request and parsing,
the scripted evaluator and the registry's choice."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from processors.evaluators import (
    EvaluationContext, EvaluatorRegistry, EvaluatorSettings, QualityEvaluator, ScriptedEvaluator,
    ScriptExhausted, TaskEvaluator, UnknownEvaluator, UnparseableJudgement, VlmJudge,
    default_registry, parse_judgement,
)
from schemas.enums import TaskType
from schemas.task_params import LlmInteractionParams

QUALITY = QualityEvaluator()
CUT_OUT = EvaluationContext(task_type=TaskType.BACKGROUND_REMOVE, expects_alpha=True)


def textured(size: int = 384, seed: int = 0) -> np.ndarray:
    """A colourful, detailed synthetic photo stand-in: smoothed colour noise plus edges."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 1.2)
    image = cv2.normalize(noise, None, 20, 235, cv2.NORM_MINMAX)
    for k in range(0, size, 32):  # some hard edges, as objects have
        cv2.rectangle(image, (k, k // 2), (k + 20, k // 2 + 40), (230, 40, 60), -1)
    return image


def score(array: np.ndarray, context: EvaluationContext = EvaluationContext()):
    return QUALITY.evaluate(Image.fromarray(array), context)


def test_a_sharp_image_scores_above_a_blurred_copy_of_itself():
    sharp = textured()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    a, b = score(sharp), score(blurred)
    assert a.score > b.score
    assert a.signals["sharpness"] > 0.75 > 0.25 > b.signals["sharpness"]
    assert a.reasons == ()
    assert any(r.startswith("blurry (sharpness 0.") for r in b.reasons)
    assert a.score >= 0.7 > b.score  # the default threshold tells them apart


def test_more_blur_scores_lower():
    sharp = textured(seed=3)
    scores = [score(cv2.GaussianBlur(sharp, (0, 0), s) if s else sharp).score for s in (0, 1, 2, 4)]
    assert scores == sorted(scores, reverse=True)


def test_clipped_exposure_lowers_the_score():
    image = textured()
    clipped = image.copy()
    clipped[: int(0.4 * len(image))] = 255  # the top 40 % blown out
    a, b = score(image), score(clipped)
    assert b.score < a.score
    assert b.signals["exposure"] == 0.0 and b.signals["white_fraction"] == pytest.approx(0.4, abs=0.01)
    assert any(r.startswith("overexposed") for r in b.reasons)
    dark = image.copy()
    dark[:, : len(image) // 3] = 0
    assert score(dark).score < a.score and any(r.startswith("underexposed") for r in score(dark).reasons)


def test_grey_scores_lower_on_colourfulness_than_colour():
    image = textured()
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    assert score(grey).signals["colourfulness"] < 0.2 < 0.9 < score(image).signals["colourfulness"]
    assert any(r.startswith("dull colours") for r in score(grey).reasons)


def cut_out(alpha: np.ndarray) -> np.ndarray:
    return np.dstack([textured(len(alpha)), alpha])


def disc_alpha(size: int = 256) -> np.ndarray:
    alpha = np.zeros((size, size), np.uint8)
    cv2.circle(alpha, (size // 2, size // 2), size // 3, 255, -1, lineType=cv2.LINE_AA)
    return alpha


def test_a_clean_cut_out_passes_its_alpha_check():
    result = score(cut_out(disc_alpha()), CUT_OUT)
    assert result.signals["alpha"] == 1.0
    assert 0.0 < result.signals["transparent_fraction"] < 1.0
    assert not any("cut-out" in r for r in result.reasons)


@pytest.mark.parametrize("alpha_value, what", [(0, "every pixel transparent"), (255, "nothing cut out"),
                                               (128, "soft, semi-transparent matte")])
def test_bad_cut_outs_are_named(alpha_value, what):
    result = score(cut_out(np.full((128, 128), alpha_value, np.uint8)), CUT_OUT)
    assert result.signals["alpha"] < 0.5
    assert any(r.startswith(f"bad cut-out: {what}") for r in result.reasons)
    good = score(cut_out(disc_alpha(128)), CUT_OUT)
    assert result.score < good.score
    if alpha_value == 0:
        assert result.score == 0.0  # an empty cut-out is no result


def test_an_opaque_rgba_picture_is_judged_as_a_picture():
    image = textured(128)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    assert "alpha" not in score(rgba).signals
    assert score(rgba).score == pytest.approx(score(image).score)


def test_large_images_are_measured_at_the_same_scale():
    big = cv2.resize(textured(256), (2048, 2048), interpolation=cv2.INTER_CUBIC)
    assert score(big).signals["laplacian_variance"] == pytest.approx(
        score(cv2.resize(big, (512, 512), interpolation=cv2.INTER_AREA)).signals["laplacian_variance"], rel=0.05)


def images():
    shapes = st.tuples(st.integers(1, 48), st.integers(1, 48))
    gray = shapes.flatmap(lambda s: arrays(np.uint8, s)).map(lambda a: Image.fromarray(a, "L"))
    rgb = shapes.flatmap(lambda s: arrays(np.uint8, (*s, 3))).map(lambda a: Image.fromarray(a, "RGB"))
    rgba = shapes.flatmap(lambda s: arrays(np.uint8, (*s, 4))).map(lambda a: Image.fromarray(a, "RGBA"))
    return st.one_of(gray, rgb, rgba)


@settings(max_examples=200, deadline=None)
@given(image=images(), expects_alpha=st.booleans())
def test_every_score_and_signal_lies_in_range(image, expects_alpha):
    result = QUALITY.evaluate(image, EvaluationContext(expects_alpha=expects_alpha))
    assert 0.0 <= result.score <= 1.0
    assert all(math.isfinite(v) for v in result.signals.values())
    for name in ("sharpness", "exposure", "colourfulness", "alpha"):
        if name in result.signals:
            assert 0.0 <= result.signals[name] <= 1.0


def test_the_scripted_evaluator_returns_its_script():
    scripted = ScriptedEvaluator([0.2, (0.9, ["fine"])])
    first = scripted.evaluate(Image.new("RGB", (8, 8)))
    assert (first.score, first.evaluator) == (0.2, "scripted") and first.reasons
    assert scripted.evaluate().reasons == ("fine",)
    with pytest.raises(ScriptExhausted):
        scripted.evaluate()


def test_auto_picks_the_model_based_evaluator_only_when_configured():
    registry = default_registry()
    assert isinstance(registry.resolve("auto"), QualityEvaluator)
    judge = registry.resolve("auto", EvaluatorSettings(vlm_model="Qwen/Qwen2-VL-7B-Instruct"))
    assert isinstance(judge, VlmJudge) and isinstance(judge, TaskEvaluator)
    assert isinstance(registry.resolve("quality", EvaluatorSettings(vlm_model="m")), QualityEvaluator)
    with pytest.raises(UnknownEvaluator, match="not configured"):
        registry.resolve("vlm")
    with pytest.raises(UnknownEvaluator, match="known: auto, vlm, quality\\+clip, clip, quality"):
        registry.resolve("sharpness")
    registry.register("scripted", lambda s: ScriptedEvaluator([1.0]))
    assert isinstance(registry.resolve("scripted"), ScriptedEvaluator)
    assert EvaluatorSettings.from_env({"COMPUTE_EVALUATOR_VLM_MODEL": "m"}).vlm_model == "m"
    with pytest.raises(UnknownEvaluator):
        EvaluatorRegistry().resolve("auto")


def test_the_vlm_judge_builds_its_llm_task_and_parses_the_answer():
    judge = VlmJudge(EvaluatorSettings(vlm_model="Qwen/Qwen2-VL-7B-Instruct", vlm_provider_type="vllm"))
    params = judge.request("s3://results/a.png", EvaluationContext(prompt="a red dress"))
    assert isinstance(params, LlmInteractionParams) and params.temperature == 0.0
    assert params.provider_config == {"model": "Qwen/Qwen2-VL-7B-Instruct", "image_urls": ["s3://results/a.png"]}
    assert '"a red dress"' in params.prompt and '"score"' in params.prompt
    answer = 'Here is my verdict:\n```json\n{"score": 0.62, "reasons": ["blurry face", "extra finger"]}\n```'
    evaluation = judge.parse(answer)
    assert (evaluation.score, evaluation.reasons, evaluation.evaluator) == (0.62, ("blurry face", "extra finger"), "vlm")


@pytest.mark.parametrize("text, expected", [
    ('{"score": 150}', 1.0), ('{"score": 0.0}', 0.0), ('{"score": 7, "reasons": "soft"}', 0.7), ("Score: 0.35", 0.35),
    ("I would give it 8/10.", 0.8), ("about 45%", 0.45), ("score = 62", 0.62),
])
def test_judgement_parsing(text, expected):
    assert parse_judgement(text)[0] == pytest.approx(expected)


def test_an_answer_without_a_score_is_refused():
    with pytest.raises(UnparseableJudgement):
        parse_judgement("The image looks nice.")
    with pytest.raises(Exception, match="vlm_model"):
        VlmJudge(EvaluatorSettings())
