from __future__ import annotations

import pytest

from gpu_consumers.errors import InvalidInput, TaskCancelled
from gpu_consumers.handlers.llm_interaction import TransformersLlmInteraction
from schemas.task_params import LlmInteractionParams
from tests.gpu_consumers.handlers.model_support import (  # noqa: F401 - fixtures
    model_cache,
    model_ctx,
    one_torch_thread,
)
from tests.gpu_consumers.handlers.support import Harness

PROMPT = "Describe a red bottle on marble."


def ask(cache, harness: Harness | None = None, **kw):
    harness = harness or Harness()
    params = LlmInteractionParams(prompt=kw.pop("prompt", PROMPT), **kw)
    return TransformersLlmInteraction().run(params, model_ctx(harness, cache))


def test_greedy_is_deterministic_and_the_text_is_the_result(model_cache):
    harness = Harness()
    first = ask(model_cache, harness, temperature=0.0, max_tokens=8, system_prompt="Be brief.")
    assert first.text and first.seed is None and first.provider == "transformers"
    assert first.outputs[0].content_type == "text/plain"
    assert first.outputs[0].data.decode("utf-8") == first.text
    assert first.model.startswith("offline:llm-")
    again = ask(model_cache, temperature=0.0, max_tokens=8, system_prompt="Be brief.")
    assert again.text == first.text
    assert ask(model_cache, temperature=0.0, max_tokens=8).text != first.text  # system prompt used
    harness.assert_progress_complete()


def test_max_tokens_is_respected(model_cache):
    for budget in (1, 3, 6):
        result = ask(model_cache, temperature=0.0, max_tokens=budget)
        assert result.extra["completion_tokens"] <= budget
        assert result.extra["max_new_tokens"] == budget


def test_sampling_follows_the_seed(model_cache):
    def text(seed):
        return ask(model_cache, temperature=1.5, max_tokens=10, provider_config={"seed": seed}).text

    assert text(1) == text(1)
    assert len({text(s) for s in range(1, 5)}) > 1
    drawn = ask(model_cache, max_tokens=4)  # temperature None: sampling at 0.7, random seed
    assert drawn.extra["temperature"] == 0.7 and drawn.seed is not None


def test_provider_config_and_cancel(model_cache):
    with pytest.raises(InvalidInput, match="unknown key"):
        ask(model_cache, provider_config={"stream": True})
    harness = Harness(cancel_after=1)
    with pytest.raises(TaskCancelled):
        ask(model_cache, harness, temperature=0.0, max_tokens=10)
    assert harness.progress == [0.1]
