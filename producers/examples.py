"""One valid task per type, taken from the seed document's examples (where it has one).

Used by ``computectl demo``, the benchmarks and the tests; URLs are placeholders that only a
worker would fetch.
"""

from __future__ import annotations

from typing import Any

from schemas.enums import TaskType

_IMG = "https://cdn.example.com/generations/look-001.png"

SEED_EXAMPLES: dict[TaskType, dict[str, Any]] = {
    TaskType.GENERATION: {
        "prompt": "A woman wearing a blue summer dress, full body shot, studio lighting",
        "width": 1024,
        "height": 1536,
        "seed": 42,
        "subject_lora_weight": 0.8,
        "product_lora_weight": 0.9,
        "reference_image_url": "https://cdn.example.com/products/dress-7.png",
        "reference_image_strength": 0.3,
    },
    TaskType.EDITING: {
        "base_image_url": _IMG,
        "reference_images": [{"url": "https://cdn.example.com/products/dress-7.png", "type": "garment"}],
        "prompt": "Place the dress naturally on the model",
        "strength": 0.8,
    },
    TaskType.REFINE: {
        "base_image_url": _IMG,
        "target_width": 2048,
        "target_height": 3072,
        "upscale_enabled": True,
        "upscale_factor": 2,
        "upscale_steps": 20,
        "upscale_denoise": 0.3,
        "face_detail_enabled": True,
        "face_detail_steps": 10,
        "face_detail_denoise": 0.2,
    },
    TaskType.VIDEO_GENERATION: {
        "base_image_url": _IMG,
        "motion_bucket_id": 127,
        "fps": 24,
        "duration": 3.0,
        "seed": 42,
    },
    TaskType.BACKGROUND_FIX: {
        "base_image_url": _IMG,
        "background_prompt": "Clean white studio background with soft shadows",
    },
    TaskType.FACE_ENHANCER: {"base_image_url": _IMG, "strength": 0.5, "preserve_identity": True},
    TaskType.IMAGE_ADJUSTER: {
        "base_image_url": _IMG,
        "brightness": 0.1,
        "contrast": 0.05,
        "saturation": -0.1,
    },
    TaskType.DETAIL_ENHANCER: {"base_image_url": _IMG, "strength": 0.4, "preserve_original": True},
    TaskType.BACKGROUND_REMOVE: {"image_url": _IMG, "output_format": "png"},
    TaskType.LLM_INTERACTION: {
        "prompt": "Write a one-line product caption for a blue summer dress.",
        "system_prompt": "You are a fashion copywriter.",
        "max_tokens": 64,
        "temperature": 0.7,
    },
}
