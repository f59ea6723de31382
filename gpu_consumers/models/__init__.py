"""Model registry and the offline (tiny random-weight) model profile.

``ModelRegistry(profile, cache_dir).path_for(role)`` resolves a role to something
``from_pretrained`` accepts: a production hub id, or in the offline profile a local folder holding
a tiny model built on first use. Loading is left to the handlers.
"""

from gpu_consumers.models.loras import (
    LORA_ADAPTERS,
    LORA_WEIGHT_NAME,
    LoraRefError,
    LoraSource,
    ResolvedLora,
)
from gpu_consumers.models.model_registry import (
    IpAdapterSource,
    ModelProfile,
    ModelRegistry,
    ModelSpec,
    Role,
    image_processor_class,
    production_specs,
)

__all__ = [
    "LORA_ADAPTERS",
    "LORA_WEIGHT_NAME",
    "IpAdapterSource",
    "LoraRefError",
    "LoraSource",
    "ModelProfile",
    "ModelRegistry",
    "ModelSpec",
    "ResolvedLora",
    "Role",
    "image_processor_class",
    "production_specs",
]
