"""Tiny random-weight vision-language models for the offline profile (the ``vlm`` and ``clip``
roles), built the way :mod:`.offline` builds the others: from a config, seeded, written with
``save_pretrained`` and loaded back with the real ``from_pretrained`` path.

* ``vlm``: a LLaVA (``LlavaForConditionalGeneration``: a tiny CLIP vision tower, a projector and a
  tiny Qwen2 text model) with a ``LlavaProcessor`` (a tiny CLIP image processor, the local ChatML
  tokenizer of :mod:`.vocab` plus an ``<image>`` token, and a chat template that places one
  ``<image>`` per ``{"type": "image"}`` content part). It loads through ``AutoProcessor`` and
  ``AutoModelForImageTextToText``, the classes that load the production VLM.
* ``clip``: a ``CLIPModel`` dual encoder with a ``CLIPProcessor`` (the CLIP tokenizer files
  :mod:`.vocab` writes for the diffusion text encoder, and a tiny CLIP image processor).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch

from gpu_consumers.models.vocab import build_chat_tokenizer, write_clip_tokenizer_files

IMAGE_TOKEN = "<image>"

# ChatML (as vocab.CHATML_TEMPLATE) where a message's content may also be a list of parts, the
# shape processors' chat templates take: a text part is its text, an image part one <image>
# placeholder, which the processor expands to the image's patch tokens.
VISION_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The vision towers of both roles: CLIP ViT sized like the other tiny encoders; 32 px images in
# 8 px patches are 16 image tokens, plenty to carry an image's content on a CPU.
_VISION: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                           "num_hidden_layers": 2, "image_size": 32, "patch_size": 8}


def default_configs() -> dict[str, dict[str, Any]]:
    """The offline configs of the ``vlm`` and ``clip`` roles (fresh copies)."""
    return copy.deepcopy({
        "vlm": {
            "seed": 7,
            "tokenizer_vocab_size": 512,
            "vision": _VISION,
            # The llm role's text model: with the usual 0.02 init a random LM repeats one token
            # whatever its input; 0.5 makes the output depend on the prompt and the image.
            "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 512, "tie_word_embeddings": True,
                     "initializer_range": 0.5},
        },
        "clip": {
            "seed": 8,
            "projection_dim": 32,
            "vision": _VISION,
            "text": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                     "num_hidden_layers": 2, "max_position_embeddings": 77},
        },
    })


def build_vlm(out_dir: Path, cfg: dict[str, Any]) -> None:
    """A LlavaForConditionalGeneration + LlavaProcessor (see the module doc)."""
    from transformers import CLIPVisionConfig, GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config

    from gpu_consumers.models.offline import _clip_image_processor

    tokenizer = build_chat_tokenizer(cfg["tokenizer_vocab_size"])
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vision = cfg["vision"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    torch.manual_seed(cfg["seed"])
    model = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=Qwen2Config(**cfg["text"], vocab_size=len(tokenizer),
                                eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=None),
        image_token_index=image_token_id, image_seq_length=patches,
        # LLaVA-1.5's choice: the last layer's patch features, the CLS token dropped.
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    ))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    processor = LlavaProcessor(
        image_processor=_clip_image_processor(vision["image_size"]), tokenizer=tokenizer,
        patch_size=vision["patch_size"], vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped again by "default"
        chat_template=VISION_CHATML_TEMPLATE, image_token=IMAGE_TOKEN)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def build_clip(out_dir: Path, cfg: dict[str, Any]) -> None:
    """A CLIPModel + CLIPProcessor whose tokenizer is the local CLIP vocabulary."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    from gpu_consumers.models.offline import _clip_image_processor

    vocab_dir = out_dir / "_vocab"
    ids = write_clip_tokenizer_files(vocab_dir)
    window = cfg["text"]["max_position_embeddings"]
    tokenizer = CLIPTokenizer.from_pretrained(vocab_dir, model_max_length=window)
    torch.manual_seed(cfg["seed"])
    model = CLIPModel(CLIPConfig(
        text_config={**cfg["text"], "vocab_size": ids["vocab_size"],
                     "bos_token_id": ids["bos_token_id"], "eos_token_id": ids["eos_token_id"],
                     "pad_token_id": ids["eos_token_id"]},
        vision_config=cfg["vision"], projection_dim=cfg["projection_dim"]))
    model.save_pretrained(out_dir)
    CLIPProcessor(image_processor=_clip_image_processor(cfg["vision"]["image_size"]),
                  tokenizer=tokenizer).save_pretrained(out_dir)
    shutil.rmtree(vocab_dir, ignore_errors=True)  # the saved tokenizer holds the vocabulary


BUILDERS = {"vlm": build_vlm, "clip": build_clip}
