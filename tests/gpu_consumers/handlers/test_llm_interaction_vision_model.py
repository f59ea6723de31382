"""LLM_INTERACTION with images: the tiny offline VLM (``transformers`` provider with
``image_urls``) and the CLIP prompt-alignment provider (``clip``)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_consumers.errors import InvalidInput
from gpu_consumers.handlers.llm_interaction import ClipLlmInteraction, TransformersLlmInteraction
from gpu_consumers.handlers.vision_inputs import alignment_score
from gpu_consumers.inputs import InputFetcher, InputSettings
from gpu_consumers.models import Role, production_specs
from schemas.task_params import LlmInteractionParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    model_cache,
    model_ctx,
    noise_image,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness

JUDGE_PROMPT = "Judge the attached image. Answer with a score."
VLM_ID = production_specs()[Role.VLM].model_id


def judge(cache, harness: Harness, handler=TransformersLlmInteraction, **kw):
    params = LlmInteractionParams(prompt=kw.pop("prompt", JUDGE_PROMPT), **kw)
    return handler().run(params, model_ctx(harness, cache))


class FirstStep:
    """What the model's first forward pass (the prompt, before any new token) received and
    returned: hooks on the module, so the handler runs unchanged."""

    def __init__(self, model) -> None:
        self.pixel_values: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self._handles = [model.register_forward_pre_hook(self._before, with_kwargs=True),
                         model.register_forward_hook(self._after, with_kwargs=True)]
        self._first = True

    def _before(self, module, args, kwargs):
        self._first = kwargs.get("pixel_values") is not None
        if self._first:
            self.pixel_values.append(kwargs["pixel_values"].detach().clone())

    def _after(self, module, args, kwargs, output):
        if self._first:
            self.logits.append(output.logits[0, -1].detach().clone())

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def test_the_vlm_sees_the_image(model_cache):
    model, processor = model_cache.vlm()
    harness = Harness()
    red = np.zeros((40, 56, 3), np.uint8)
    red[..., 0] = 220
    images = {"mem://red": red, "mem://noise": noise_image(48, 48, seed=3)}
    for url, pixels in images.items():
        harness.add(url, pixels)
    spy = FirstStep(model)
    try:
        results = {url: judge(model_cache, harness, temperature=0.0, max_tokens=4,
                              system_prompt="Be strict.",
                              provider_config={"image_urls": [url], "model": VLM_ID})
                   for url in images}
        again = judge(model_cache, harness, temperature=0.0, max_tokens=4,
                      system_prompt="Be strict.", provider_config={"image_urls": ["mem://red"]})
    finally:
        spy.close()

    # The processor's pixel inputs are exactly that image's, and differ from image to image.
    assert len(spy.pixel_values) == 3
    for seen, pixels in zip(spy.pixel_values, images.values()):
        expected = processor.image_processor(images=Image.fromarray(pixels), return_tensors="pt")
        assert torch.equal(seen, expected["pixel_values"])
    assert not torch.equal(spy.pixel_values[0], spy.pixel_values[1])
    # Same prompt, greedy: the model's first-step logits follow the image (and only the image).
    assert not torch.allclose(spy.logits[0], spy.logits[1])
    assert torch.equal(spy.logits[0], spy.logits[2]) and again.text == results["mem://red"].text

    red_result = results["mem://red"]
    assert red_result.model.startswith("offline:vlm-") and red_result.provider == "transformers"
    assert red_result.model == model_cache.model_id(Role.VLM)
    assert red_result.extra["images"] == [{"url": "mem://red", "width": 56, "height": 40}]
    patches = model.config.image_seq_length
    assert red_result.extra["prompt_tokens"] > patches  # the image's tokens are in the prompt
    assert red_result.outputs[0].data.decode("utf-8") == red_result.text


def test_without_images_the_text_llm_answers(model_cache):
    result = judge(model_cache, Harness(), temperature=0.0, max_tokens=3)
    assert result.model == model_cache.model_id(Role.LLM) and "images" not in result.extra
    served = model_cache.model_id(Role.LLM)
    named = judge(model_cache, Harness(), temperature=0.0, max_tokens=3,
                  provider_config={"model": served})
    assert named.text == result.text


@pytest.fixture
def real_inputs(tmp_path):
    """The worker's real fetcher, allowed to read only ``tmp_path``."""
    fetcher = InputFetcher(InputSettings(allowed_file_roots=[tmp_path]))
    yield fetcher
    fetcher.close()


def _png(path) -> str:
    Image.fromarray(noise_image(16, 16)).save(path)
    return path.resolve().as_uri()


@pytest.mark.parametrize("provider", [TransformersLlmInteraction, ClipLlmInteraction])
def test_image_urls_follow_the_input_rules(model_cache, real_inputs, tmp_path, tmp_path_factory,
                                           provider):
    good = _png(tmp_path / "good.png")
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image at all")
    outside = _png(tmp_path_factory.mktemp("elsewhere") / "outside.png")
    cases = {
        "ftp://example.com/a.png": "unsupported URL scheme",
        "http://127.0.0.1:9/a.png": "private networks are not allowed",
        "http://[::1]/a.png": "private networks are not allowed",
        text_file.resolve().as_uri(): "not an image",
        outside: "outside the allowed folders|not readable",  # (the wording of a refusal)
    }
    harness = Harness()
    for url, reason in cases.items():
        ctx = dataclasses.replace(model_ctx(harness, model_cache), fetch=real_inputs)
        params = LlmInteractionParams(prompt=JUDGE_PROMPT, temperature=0.0, max_tokens=2,
                                      provider_config={"image_urls": [url]})
        with pytest.raises(InvalidInput, match=reason):
            provider().run(params, ctx)
    # The same fetcher lets an image under the allowed root through.
    ctx = dataclasses.replace(model_ctx(harness, model_cache), fetch=real_inputs)
    params = LlmInteractionParams(prompt=JUDGE_PROMPT, temperature=0.0, max_tokens=2,
                                  provider_config={"image_urls": [good]})
    assert provider().run(params, ctx).extra["images"][0]["width"] == 16


def test_bad_provider_config_is_invalid_input(model_cache):
    harness = Harness()
    url = harness.add("mem://one", noise_image(16, 16))
    bad = [
        (TransformersLlmInteraction, {"image_urls": [url] * 5}, "list of 1 to 4"),
        (TransformersLlmInteraction, {"image_urls": []}, "list of 1 to 4"),
        (TransformersLlmInteraction, {"image_urls": url}, "list of 1 to 4"),
        (TransformersLlmInteraction, {"image_urls": [url], "stream": True}, "unknown key"),
        (TransformersLlmInteraction, {"image_urls": [url], "model": "org/other-vlm"},
         "not served here: this worker's vlm model is 'offline:vlm-"),
        # Without images the llm role answers, so the VLM's id is the wrong model.
        (TransformersLlmInteraction, {"model": VLM_ID}, "this worker's llm model is"),
        (ClipLlmInteraction, {"image_urls": [url, url]}, "exactly 1"),
        (ClipLlmInteraction, {}, "needs provider_config.image_urls"),
        (ClipLlmInteraction, {"image_urls": [url], "seed": 3}, "unknown key"),
        (ClipLlmInteraction, {"image_urls": [url], "model": VLM_ID}, "clip model is"),
    ]
    for handler, config, reason in bad:
        ctx = model_ctx(harness, model_cache)
        params = LlmInteractionParams(prompt=JUDGE_PROMPT, provider_config=config)
        with pytest.raises(InvalidInput, match=reason):
            handler().run(params, ctx)
        assert ctx.fetch.fetched == []  # refused before any image was fetched


def _direct_similarity(cache, prompt: str, image: Image.Image) -> float:
    """The cosine similarity computed straight from a freshly loaded CLIPModel."""
    from transformers import CLIPModel, CLIPProcessor

    path = cache.registry.path_for(Role.CLIP)
    model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt", padding=True,
                       truncation=True, max_length=77)
    with torch.no_grad():
        text = model.get_text_features(input_ids=inputs["input_ids"],
                                       attention_mask=inputs["attention_mask"])
        pixels = model.get_image_features(pixel_values=inputs["pixel_values"])
    text = getattr(text, "pooler_output", text)  # a tensor, or an output object in newer versions
    pixels = getattr(pixels, "pooler_output", pixels)
    return float(torch.nn.functional.cosine_similarity(text, pixels)[0])


def test_clip_scores_the_prompt_against_the_image(model_cache):
    harness = Harness()
    images = {"mem://a": noise_image(40, 40, seed=1), "mem://b": noise_image(40, 40, seed=2)}
    for url, pixels in images.items():
        harness.add(url, pixels)
    prompt = "a red bottle on a white marble table"
    results = {url: judge(model_cache, harness, ClipLlmInteraction, prompt=prompt,
                          provider_config={"image_urls": [url], "model": model_cache.model_id(Role.CLIP)})
               for url in images}

    for url, result in results.items():
        verdict = json.loads(result.text)
        assert set(verdict) == {"similarity", "score", "model"}
        assert verdict["model"] == result.model == model_cache.model_id(Role.CLIP)
        assert verdict["model"].startswith("offline:clip-") and result.provider == "clip"
        expected = _direct_similarity(model_cache, prompt, Image.fromarray(images[url]))
        assert verdict["similarity"] == pytest.approx(expected, abs=1e-5)
        assert -1.0 <= verdict["similarity"] <= 1.0
        assert verdict["score"] == alignment_score(verdict["similarity"]) and 0 <= verdict["score"] <= 1
        assert result.extra["similarity"] == verdict["similarity"]
        assert result.extra["score"] == verdict["score"]
        assert result.extra["images"] == [{"url": url, "width": 40, "height": 40}]
        assert result.extra["prompt_truncated"] is False
        assert json.loads(result.outputs[0].data) == verdict
        assert result.outputs[0].content_type == "application/json"
    assert json.loads(results["mem://a"].text)["similarity"] != json.loads(
        results["mem://b"].text)["similarity"]


def test_clip_truncates_a_long_prompt_to_its_window(model_cache):
    harness = Harness()
    url = harness.add("mem://c", noise_image(32, 32, seed=4))
    head = "a red bottle " * 30  # 90 words: past 77 tokens
    long = judge(model_cache, harness, ClipLlmInteraction, prompt=head + "on a beach at sunset",
                 provider_config={"image_urls": [url]})
    other_tail = judge(model_cache, harness, ClipLlmInteraction, prompt=head + "in a city street",
                       provider_config={"image_urls": [url]})
    assert long.extra["prompt_truncated"] is True and long.extra["max_prompt_tokens"] == 77
    assert long.extra["prompt_tokens"] > 77
    # What lies past the window cannot change the similarity.
    assert json.loads(long.text)["similarity"] == json.loads(other_tail.text)["similarity"]


def test_the_score_maps_clip_similarity_onto_0_to_1():
    assert alignment_score(0.15) == 0.0 and alignment_score(0.35) == 1.0
    assert alignment_score(0.25) == pytest.approx(0.5)
    assert alignment_score(-0.4) == 0.0 and alignment_score(0.9) == 1.0
