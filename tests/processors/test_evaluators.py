"""The evaluator plugins: the weight-free quality signals, the VLM judge's request and parsing,
the scripted evaluator and the registry's choice."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from processors.evaluators import (
    EvaluationContext,
    EvaluatorRegistry,
    EvaluatorSettings,
    QualityEvaluator,
    ScriptedEvaluator,
    ScriptExhausted,
    TaskEvaluator,
    UnknownEvaluator,
    UnparseableJudgement,
    VlmJudge,
    default_registry,
    parse_judgement,
)
from processors.evaluators.calibration import load_photo
from schemas.enums import TaskType
from schemas.task_params import LlmInteractionParams

QUALITY = QualityEvaluator()
CUT_OUT = EvaluationContext(task_type=TaskType.BACKGROUND_REMOVE, expects_alpha=True)


def photo(size: int = 384) -> np.ndarray:
    """A real photograph (scikit-image's astronaut, square), reduced to ``size`` px."""
    return cv2.resize(load_photo("astronaut"), (size, size), interpolation=cv2.INTER_AREA)


def score(array: np.ndarray, context: EvaluationContext = EvaluationContext()):
    return QUALITY.evaluate(Image.fromarray(array), context)


def test_a_sharp_image_scores_above_a_blurred_copy_of_itself():
    sharp = photo()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    a, b = score(sharp), score(blurred)
    assert a.score > b.score
    assert a.signals["sharpness"] > 0.75 > 0.25 > b.signals["sharpness"]
    assert a.reasons == ()
    assert any(r.startswith("blurry (sharpness 0.") for r in b.reasons)
    assert a.score >= 0.7 > b.score  # the default threshold tells them apart


def test_more_blur_scores_lower():
    sharp = photo()
    scores = [score(cv2.GaussianBlur(sharp, (0, 0), s) if s else sharp).score for s in (0, 1, 2, 4)]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]


def test_noise_lowers_the_score_and_is_named():
    """The old Laplacian signal read noise as detail: noise must lower the score, not raise it."""
    clean = photo()
    rng = np.random.default_rng(0)
    scores = [score(np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255).astype(np.uint8))
              for sigma in (0, 10, 25, 50)]
    assert [s.score for s in scores] == sorted((s.score for s in scores), reverse=True)
    assert scores[0].score >= 0.7 > scores[2].score
    assert any(r.startswith("noisy") for r in scores[3].reasons)
    pure = score(rng.integers(0, 256, clean.shape, dtype=np.uint8))
    assert pure.score < 0.1 and any(r.startswith("noisy") for r in pure.reasons)


def test_jpeg_blocking_lowers_the_score_and_is_named():
    clean = photo(512)
    buffer = io.BytesIO()
    Image.fromarray(clean).save(buffer, "JPEG", quality=5)
    blocky = QUALITY.evaluate(Image.open(buffer))
    assert blocky.score < 0.7 <= score(clean).score
    assert any(r.startswith("JPEG artefacts") for r in blocky.reasons)


def test_clipped_exposure_lowers_the_score():
    image = photo()
    clipped = image.copy()
    clipped[: int(0.4 * len(image))] = 255  # the top 40 % blown out
    a, b = score(image), score(clipped)
    assert b.score < a.score
    assert b.signals["exposure"] < 0.2 and b.signals["white_fraction"] == pytest.approx(0.4, abs=0.02)
    assert any(r.startswith("clipped highlights") for r in b.reasons)
    dark = image.copy()
    dark[:, : len(image) // 2] = 0
    assert score(dark).score < a.score and any("underexposed" in r for r in score(dark).reasons)


def test_a_partly_rendered_frame_and_a_blank_one_are_named():
    image = photo()
    half = image.copy()
    half[len(image) // 2:] = 128  # an aborted decode's grey
    assert score(half).score < 0.7 and any(r.startswith("partly rendered") for r in score(half).reasons)
    blank = score(np.full_like(image, 200))
    assert blank.score == 0.0 and blank.reasons == ("blank frame (contrast 0.00)",)


def test_the_requested_size_judges_the_aspect_ratio():
    image = photo(256)
    stretched = cv2.resize(image, (384, 256))
    asked = EvaluationContext(width=1024, height=1024)
    assert score(stretched, asked).score < 0.7 and any(
        r.startswith("wrong aspect ratio") for r in score(stretched, asked).reasons)
    assert score(image, asked).signals["aspect"] == 1.0
    assert "aspect" not in score(stretched).signals  # no requested size: nothing to compare


def test_grey_scores_lower_on_colourfulness_than_colour():
    image = photo()
    grey = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    assert score(grey).signals["colourfulness"] < 0.2 < 0.9 < score(image).signals["colourfulness"]
    assert any(r.startswith("dull colours") for r in score(grey).reasons)
    assert score(grey).score >= 0.7  # a black-and-white photo is not a broken one


def cut_out(alpha: np.ndarray) -> np.ndarray:
    return np.dstack([photo(len(alpha)), alpha])


def disc_alpha(size: int = 256) -> np.ndarray:
    alpha = np.zeros((size, size), np.uint8)
    cv2.circle(alpha, (size // 2, size // 2), size // 3, 255, -1, lineType=cv2.LINE_AA)
    return alpha


def test_a_clean_cut_out_passes_its_alpha_check():
    result = score(cut_out(disc_alpha()), CUT_OUT)
    assert result.signals["alpha"] == 1.0
    assert 0.0 < result.signals["transparent_fraction"] < 1.0
    assert not any("cut-out" in r for r in result.reasons)


def holes(alpha: np.ndarray) -> np.ndarray:
    alpha = alpha.copy()
    for k in range(12):  # holes punched through the subject
        cv2.circle(alpha, (80 + 16 * (k % 6), 100 + 30 * (k // 6)), 6, 0, -1)
    return alpha


def speckle(alpha: np.ndarray) -> np.ndarray:
    alpha = alpha.copy()
    for k in range(60):  # stray opaque dots over the background
        alpha[(k * 37) % 40 + 2, (k * 53) % 250 + 2] = 255
    return alpha


@pytest.mark.parametrize("alpha, what", [
    (np.full((128, 128), 0, np.uint8), "every pixel transparent"), (np.full((128, 128), 255, np.uint8), "nothing cut out"),
    (np.full((128, 128), 128, np.uint8), "soft, semi-transparent matte"),
    (holes(disc_alpha()), "holes in the subject"), (speckle(disc_alpha()), "speckled, fragmented matte"),
])
def test_bad_cut_outs_are_named(alpha, what):
    result = score(cut_out(alpha), CUT_OUT)
    assert result.signals["alpha"] < 0.5
    assert any(r.startswith(f"bad cut-out: {what}") for r in result.reasons)
    good = score(cut_out(disc_alpha(len(alpha))), CUT_OUT)
    assert result.score < good.score
    if what == "every pixel transparent":
        assert result.score == 0.0  # an empty cut-out is no result


def test_an_opaque_rgba_picture_is_judged_as_a_picture():
    image = photo(128)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    assert "alpha" not in score(rgba).signals
    assert score(rgba).score == pytest.approx(score(image).score)


def test_large_images_are_measured_at_the_same_scale():
    big = cv2.resize(photo(512), (2048, 2048), interpolation=cv2.INTER_CUBIC)
    small = cv2.resize(big, (512, 512), interpolation=cv2.INTER_AREA)
    for signal in ("noise_sigma", "reblur", "gradient_kurtosis", "luma_std"):
        assert score(big).signals[signal] == pytest.approx(score(small).signals[signal], rel=0.1), signal
    assert score(big).score == pytest.approx(score(small).score, abs=0.05)


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
    for name in ("noise", "natural", "sharpness", "blockiness", "banding", "contrast", "exposure",
                 "colour_cast", "rendered", "colourfulness", "alpha"):
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
