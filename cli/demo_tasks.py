"""The demo's ten tasks: one small task of each type, on tiny input images it draws itself.

Small enough for the offline model profile on a CPU (64x96 images, one-second video, 16
tokens), so ``make demo`` runs every type in seconds.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from schemas.enums import TaskType


def demo_tasks(folder: Path) -> dict[TaskType, dict]:
    """One small task of each type, its inputs written into ``folder`` as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    look = Image.new("RGB", (64, 96), (232, 230, 226))
    draw = ImageDraw.Draw(look)
    draw.rectangle((22, 30, 42, 90), fill=(30, 60, 150))  # a blue dress on a studio backdrop
    draw.ellipse((24, 6, 40, 28), fill=(224, 172, 140))  # and a face above it
    for box in ((28, 13, 31, 16), (33, 13, 36, 16), (29, 21, 35, 23)):
        draw.ellipse(box, fill=(50, 30, 30))
    dress = Image.new("RGB", (64, 64), (180, 30, 40))
    urls = {}
    for name, image in (("look", look), ("dress", dress)):
        image.save(folder / f"{name}.png")
        urls[name] = (folder / f"{name}.png").resolve().as_uri()
    img = urls["look"]
    return {
        TaskType.GENERATION: {"prompt": "a woman in a blue summer dress, studio light",
                              "width": 64, "height": 96, "seed": 42, "subject_lora_weight": 0.8,
                              "product_lora_weight": 0.9},
        TaskType.EDITING: {"base_image_url": img, "prompt": "place the dress on the model",
                           "reference_images": [{"url": urls["dress"], "type": "garment"}],
                           "strength": 0.8},
        TaskType.REFINE: {"base_image_url": img, "upscale_factor": 2, "upscale_denoise": 0.3,
                          "face_detail_enabled": True},
        TaskType.VIDEO_GENERATION: {"base_image_url": img, "fps": 4, "duration": 1.0, "seed": 42},
        TaskType.BACKGROUND_FIX: {"base_image_url": img, "background_prompt": "white studio"},
        TaskType.FACE_ENHANCER: {"base_image_url": img, "strength": 0.5, "preserve_identity": True},
        TaskType.IMAGE_ADJUSTER: {"base_image_url": img, "brightness": 0.1, "contrast": 0.05,
                                  "saturation": -0.1, "warmth": 0.2},
        TaskType.DETAIL_ENHANCER: {"base_image_url": img, "strength": 0.4, "preserve_original": True},
        TaskType.BACKGROUND_REMOVE: {"image_url": img, "output_format": "png"},
        TaskType.LLM_INTERACTION: {"prompt": "Write a one-line caption for a blue summer dress.",
                                   "system_prompt": "You are a fashion copywriter.",
                                   "max_tokens": 16, "temperature": 0.7},
    }
