"""IMAGE_ADJUSTER's guidance: the keyword rules, the strict reading of a model's answer, and the
``transformers`` provider with a scripted model answer (the real tiny model is in
test_image_adjuster_model.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.adjust_guidance import (
    UnusableAnswer,
    combine,
    interpret_keywords,
    parse_answer,
)
from gpu_consumers.handlers.handler_set import registry
from gpu_consumers.handlers.image_adjuster import ImageAdjusterHandler, TransformersImageAdjuster
from schemas.enums import TaskType
from schemas.task_params import ImageAdjusterParams
from tests.gpu_consumers.handlers.support import Harness, decode

URL = "https://cdn.example/base.png"
RGB = np.random.default_rng(5).integers(40, 216, (16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize(("guidance", "expected"), [
    ("brighter", {"brightness": 0.2}),
    ("a bit brighter and warmer", {"brightness": 0.1, "warmth": 0.1}),
    ("much darker and slightly cooler", {"brightness": -0.4, "warmth": -0.1}),
    ("Too dark; more contrast, muted colours", {"brightness": 0.2, "contrast": 0.2, "saturation": -0.2}),
    ("not too dark, but warmer", {"warmth": 0.2}),
    ("black and white", {"saturation": -1.0}),
    ("warmer, warmer, much warmer, very warm, really warm, way warmer", {"warmth": 1.0}),  # clipped
    ("keep the warmth", {}),
])
def test_the_keyword_rules(guidance, expected):
    assert interpret_keywords(guidance).values == expected


@pytest.mark.parametrize("answer", ['{"brightness": 0.3, "warmth": -0.1}',
                                    '```json\n{"brightness": 0.3, "warmth": -0.1}\n```',
                                    ' {"brightness": 0.3, "warmth": -0.1} '])
def test_a_model_answer_is_exactly_one_json_object(answer):
    assert parse_answer(answer) == {"brightness": 0.3, "warmth": -0.1}


@pytest.mark.parametrize("answer", ["Sure! Brightness +0.3", '{"brightness": 0.3} and more', "[0.3]",
                                    "{}", '{"exposure": 0.3}', '{"brightness": "0.3"}',
                                    '{"brightness": true}', '{"brightness": 1.5}', '{"brightness": NaN}'])
def test_anything_else_is_unusable(answer):
    with pytest.raises(UnusableAnswer):
        parse_answer(answer)


def test_precedence_is_explicit_plus_guidance():
    assert combine({"brightness": 0.1, "contrast": None, "saturation": 0.9}, {"brightness": 0.3, "saturation": 0.4}) == {
        "brightness": 0.4, "contrast": 0.0, "saturation": 1.0, "warmth": 0.0}


class ScriptedModel:
    """Stands in for the language model: a fixed answer; records the questions asked."""

    def __init__(self, text: str) -> None:
        self.text, self.questions = text, []

    def __call__(self, params, ctx):
        self.questions.append(params)
        ctx.progress(1.0)  # as the real handler's last token does
        return self.text, "scripted-llm"


def adjusted(model: ScriptedModel, harness: Harness | None = None, **fields):
    harness = harness or Harness()
    harness.add(URL, RGB)
    return TransformersImageAdjuster(model).run(ImageAdjusterParams(base_image_url=URL, **fields), harness.ctx())


def classical(**fields) -> np.ndarray:
    harness = Harness()
    harness.add(URL, RGB)
    return decode(ImageAdjusterHandler().run(ImageAdjusterParams(base_image_url=URL, **fields), harness.ctx()))


def test_the_models_values_decide_and_move_the_image_the_way_the_guidance_says():
    model, harness = ScriptedModel('{"brightness": 0.3, "warmth": 0.5}'), Harness()
    result = adjusted(model, harness, prompt="brighter and golden", contrast=0.1)
    out = decode(result).astype(np.int16)
    assert out.mean() > RGB.mean() + 10  # brighter
    assert (out[..., 0] - out[..., 2]).mean() > (RGB[..., 0].astype(np.int16) - RGB[..., 2]).mean()  # warmer
    assert np.array_equal(out, classical(brightness=0.3, contrast=0.1, warmth=0.5))  # the same pixel math
    assert (result.provider, result.model) == ("transformers", "numpy-color-adjust+scripted-llm")
    assert result.extra["guidance"]["decided_by"] == "llm"
    assert result.extra["applied"] == {"brightness": 0.3, "contrast": 0.1, "warmth": 0.5}
    sidecar = result.outputs[1]  # the decision travels with the result
    assert (sidecar.content_type, sidecar.suffix) == ("application/json", ".json")
    assert json.loads(sidecar.data) == {"prompt": "brighter and golden", "decided_by": "llm",
                                        "values": {"brightness": 0.3, "warmth": 0.5},
                                        "applied": {"brightness": 0.3, "contrast": 0.1, "warmth": 0.5},
                                        "llm_model": "scripted-llm", "llm_answer": model.text}
    [question] = model.questions
    assert "brighter and golden" in question.prompt and question.temperature == 0.0
    harness.assert_progress_complete()


def test_an_unusable_answer_falls_back_to_the_rules_and_says_so():
    result = adjusted(ScriptedModel("Make it brighter!"), prompt="much darker")
    assert np.array_equal(decode(result), classical(brightness=-0.4))
    assert result.model == "numpy-color-adjust+keywords" and result.provider == "transformers"
    guidance = result.extra["guidance"]
    assert guidance["decided_by"] == "keywords" and guidance["matched"] == ["darker"]
    assert guidance["llm_unusable"].startswith("not JSON") and guidance["llm_answer"] == "Make it brighter!"
    assert json.loads(result.outputs[1].data)["llm_unusable"] == guidance["llm_unusable"]
    with pytest.raises(InvalidInput, match="no adjustment found"):  # neither reading found anything
        adjusted(ScriptedModel("no idea"), prompt="make it nice")


def test_without_a_prompt_the_classical_path_runs_and_no_model_is_asked():
    model = ScriptedModel("never read")
    result = adjusted(model, brightness=0.2, saturation=-0.3)
    assert model.questions == []
    assert (result.provider, result.model) == ("classical", "numpy-color-adjust")
    assert len(result.outputs) == 1  # no guidance, no decision to record
    assert np.array_equal(decode(result), classical(brightness=0.2, saturation=-0.3))


def test_the_model_provider_is_the_default_and_classical_stays_available():
    providers = registry([TaskType.IMAGE_ADJUSTER])[TaskType.IMAGE_ADJUSTER]
    assert list(providers) == ["transformers", "classical"]


def test_a_blank_prompt_is_no_guidance_and_a_model_that_cannot_be_asked_leaves_it_to_the_rules():
    model = ScriptedModel("never read")
    assert adjusted(model, prompt="   ", contrast=0.2).model == "numpy-color-adjust" and model.questions == []

    def too_long(params, ctx):
        raise InvalidInput("the prompt is 900 tokens; the model's context window is 512")

    harness = Harness()
    harness.add(URL, RGB)
    result = TransformersImageAdjuster(too_long).run(ImageAdjusterParams(base_image_url=URL, prompt="warmer"),
                                                     harness.ctx())
    assert result.model == "numpy-color-adjust+keywords" and result.extra["applied"] == {"warmth": 0.2}
    assert result.extra["guidance"]["llm_unusable"].startswith("the model could not be asked")
