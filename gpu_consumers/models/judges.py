"""The judge models must be able to see: a check of the ``vlm`` and ``clip`` roles' configs.

LLM_INTERACTION with images is how the processors' quality judge and prompt-alignment score look
at a result. A text-only model configured as the judge (``COMPUTE_MODEL_VLM`` pointing at a chat
LLM, say) would fail on every judge task, or worse, answer without having seen the image. So a
worker serving LLM_INTERACTION checks both roles at start-up (:func:`check_judge_models`, called
by ``computectl worker``) and refuses to start with one clear line naming the model, its class
and the setting to change.

The check reads only the model's config (``AutoConfig.from_pretrained``), never its weights:

* offline profile: the built folder's ``config.json`` (building the tiny models if needed);
* production, a local folder: its ``config.json``; a folder without a readable config is refused;
* production, a hub id: the config from the hub or the local hub cache. Where that cannot be
  reached at start-up (``HF_HUB_OFFLINE`` with nothing cached, no network), the start-up check
  skips the role with a warning and the same check runs when the model is first loaded
  (:meth:`~gpu_consumers.model_cache.ModelCache.vlm` / ``clip``), failing that task instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gpu_consumers.models.model_registry import ModelProfile, ModelRegistry, Role

log = logging.getLogger("gpu_consumers.models")

JUDGE_ROLES = (Role.VLM, Role.CLIP)


class JudgeModelError(ValueError):
    """A judge role is configured with a model that cannot judge images. Configure an
    image-text-to-text model for COMPUTE_MODEL_VLM and a CLIP model for COMPUTE_MODEL_CLIP."""


def judge_model_problem(role: Role, config: Any, name: str) -> str | None:
    """Why the model ``name`` with this transformers ``config`` cannot serve ``role``, or None."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", "") or ""
    kind = ((getattr(config, "architectures", None) or [None])[0]) or model_type or "no model type"
    if role is Role.VLM:
        if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            return None
        what = ("text-only" if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                and not hasattr(config, "vision_config") else "not an image-text-to-text model")
        return (f"the judge model {name} is {what} ({kind}): configure an image-text-to-text "
                f"model for COMPUTE_MODEL_VLM")
    if role is Role.CLIP:
        # The clip provider runs CLIPModel + CLIPProcessor: only CLIP checkpoints load there.
        if model_type == "clip":
            return None
        return (f"the prompt-alignment model {name} is not a CLIP dual encoder ({kind}): "
                f"configure a CLIP model (e.g. openai/clip-vit-large-patch14) for COMPUTE_MODEL_CLIP")
    raise ValueError(f"{role.value} is not a judge role")


def read_config(registry: ModelRegistry, role: Role) -> Any:
    """The transformers config of ``role``'s model (see the module doc for where it comes from)."""
    from transformers import AutoConfig

    target = registry.path_for(role)
    return AutoConfig.from_pretrained(target, **registry.pretrained_kwargs(role))


def check_judge_model(registry: ModelRegistry, role: Role, config: Any) -> None:
    """Raise :class:`JudgeModelError` unless ``config`` can serve ``role``."""
    problem = judge_model_problem(role, config, registry.path_for(role))
    if problem:
        raise JudgeModelError(problem)


def check_judge_models(registry: ModelRegistry) -> list[Role]:
    """Check every judge role whose config can be read now; return the roles checked. Raise
    :class:`JudgeModelError` for a model that cannot judge, or a local one whose config cannot
    be read."""
    checked = []
    for role in JUDGE_ROLES:
        target = registry.path_for(role)
        try:
            config = read_config(registry, role)
        except (OSError, ValueError) as exc:
            local = registry.profile is ModelProfile.OFFLINE or Path(target).exists()
            if local:
                raise JudgeModelError(f"cannot read the config of the {role.value} model "
                                      f"{target}: {exc}") from None
            log.warning("the %s model %s: config not reachable at start-up (%s); it is checked "
                        "when first loaded", role.value, target, exc)
            continue
        check_judge_model(registry, role, config)
        checked.append(role)
    return checked
