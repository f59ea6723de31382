"""Tiny transformers models: segmentation (background removal) and the causal LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_consumers.models import Role, image_processor_class


@pytest.fixture(scope="module")
def segmenter(registry):
    from transformers import AutoModelForSemanticSegmentation

    path = registry.path_for(Role.SEGMENTATION)
    model = AutoModelForSemanticSegmentation.from_pretrained(
        path, **registry.load_kwargs(Role.SEGMENTATION))
    processor = image_processor_class(path).from_pretrained(path)
    return model.eval(), processor


def test_segmentation_mask(segmenter):
    model, processor = segmenter
    assert model.config.id2label == {0: "background", 1: "foreground"}
    image = Image.fromarray((np.random.default_rng(1).random((40, 56, 3)) * 255).astype("uint8"))
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    assert outputs.logits.shape[:2] == (1, 2)
    result = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(image.height, image.width)], return_segmentation_scores=True)[0]
    assert tuple(result.segmentation.shape) == (40, 56)
    assert tuple(result.segmentation_scores.shape) == (2, 40, 56)
    alpha = result.segmentation_scores.softmax(dim=0)[1]  # soft foreground probability
    assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0
    assert set(result.segmentation.unique().tolist()) <= {0, 1}


@pytest.fixture(scope="module")
def llm(registry):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = registry.path_for(Role.LLM)
    model = AutoModelForCausalLM.from_pretrained(path, **registry.load_kwargs(Role.LLM))
    return model.eval(), AutoTokenizer.from_pretrained(path, local_files_only=True)


def chat(model, tokenizer, system_prompt, user, max_new_tokens=12, seed=0, **kwargs) -> str:
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": user}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, **kwargs)
    new = out[0, inputs["input_ids"].shape[1]:]
    assert len(new) <= max_new_tokens
    return tokenizer.decode(new, skip_special_tokens=True)


def test_llm_chat_generation(llm):
    model, tokenizer = llm
    assert type(model).__name__ == "Qwen2ForCausalLM"
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")

    greedy = chat(model, tokenizer, "Be brief.", "Describe a red bottle.", do_sample=False)
    assert isinstance(greedy, str) and greedy
    assert chat(model, tokenizer, "Be brief.", "Describe a red bottle.", do_sample=False) == greedy
    assert chat(model, tokenizer, None, "Describe a red bottle.", do_sample=False) != greedy

    hot = [chat(model, tokenizer, "Be brief.", "Describe a red bottle.", seed=s, do_sample=True,
                temperature=1.5) for s in (0, 0, 1)]
    assert hot[0] == hot[1] and hot[0] != hot[2]
    chat(model, tokenizer, None, "Hello", max_new_tokens=3, do_sample=True, temperature=0.7)
