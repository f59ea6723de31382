"""Which model serves which role, and where its files are.

Two profiles (see ARCHITECTURE.md §5 and issue "Models without downloads"):

* ``production``: configurable model ids (hub ids or local folders) that a real deployment
  loads with ``from_pretrained`` on a GPU;
* ``offline``: tiny random-weight models built from configs by :mod:`.offline`, written once into
  ``<cache_dir>/<role>-<config hash>`` and loaded from there, so the real diffusers/transformers
  loading and inference code runs on a CPU with no downloads.

The registry only *resolves* a role to a path or id (building it first in the offline profile);
loading stays with the handlers, which keep their pipelines warm. The registry itself holds no
models, only strings, so it is cheap to create one per worker.

Handlers are expected to load through the auto classes named in ``ModelSpec.loader`` (for example
``AutoPipelineForText2Image``), so that the same code serves the tiny SD model offline and an
SDXL- or FLUX-class model in production.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from filelock import FileLock  # a dependency of huggingface-hub, diffusers and transformers

from gpu_consumers.models.loras import (
    LORA_ADAPTERS,
    LORA_REF,
    LORA_WEIGHT_NAME,
    LoraRefError,
    LoraSource,
    ResolvedLora,
    resolve_lora_ref,
)


class ModelProfile(StrEnum):
    OFFLINE = "offline"
    PRODUCTION = "production"


class Role(StrEnum):
    TEXT_TO_IMAGE = "text_to_image"
    INPAINT = "inpaint"
    IMAGE_TO_VIDEO = "image_to_video"
    SEGMENTATION = "segmentation"
    LLM = "llm"
    VLM = "vlm"  # image-text-to-text: LLM_INTERACTION with images (the quality judge)
    CLIP = "clip"  # image-text dual encoder: LLM_INTERACTION's prompt-alignment score
    LORA = "lora"
    IP_ADAPTER = "ip_adapter"


@dataclass(frozen=True)
class IpAdapterSource:
    """Arguments of ``pipe.load_ip_adapter(model_id, subfolder=..., weight_name=...,
    image_encoder_folder=...)``."""

    model_id: str
    subfolder: str
    weight_name: str
    image_encoder_folder: str = "image_encoder"


@dataclass(frozen=True)
class ModelSpec:
    """What serves a role in production (the offline profile swaps ``model_id`` for a tiny build).

    ``loader`` names the class the handler should call ``from_pretrained`` on;
    ``torch_dtype`` / ``variant`` / ``revision`` go to ``from_pretrained`` (see
    :meth:`ModelRegistry.load_kwargs`); ``options`` carries role-specific settings.
    """

    role: Role
    model_id: str
    loader: str
    torch_dtype: str = "float16"
    variant: str | None = None
    revision: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    # LORA: adapter name -> file. IP_ADAPTER: the adapter file and its image encoder.
    lora: Mapping[str, LoraSource] = field(default_factory=dict)
    ip_adapter: IpAdapterSource | None = None


def production_specs() -> dict[Role, ModelSpec]:
    """Defaults a real deployment would use; override any of them per role."""
    return {
        # SDXL rather than FLUX.1-dev by default: openly licensed, and its LoRA and IP-Adapter
        # ecosystems match the SD-family code path the offline profile exercises. FLUX works
        # through the same auto pipelines ("black-forest-labs/FLUX.1-dev", bfloat16).
        Role.TEXT_TO_IMAGE: ModelSpec(
            Role.TEXT_TO_IMAGE, "stabilityai/stable-diffusion-xl-base-1.0",
            loader="diffusers.AutoPipelineForText2Image", variant="fp16"),
        Role.INPAINT: ModelSpec(
            Role.INPAINT, "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
            loader="diffusers.AutoPipelineForInpainting", variant="fp16"),
        Role.IMAGE_TO_VIDEO: ModelSpec(
            Role.IMAGE_TO_VIDEO, "stabilityai/stable-video-diffusion-img2vid-xt",
            loader="diffusers.StableVideoDiffusionPipeline", variant="fp16"),
        # A transformers-native semantic segmentation model whose label 0 is "background"
        # (PASCAL VOC). Use its image processor via image_processor_class(): see there.
        Role.SEGMENTATION: ModelSpec(
            Role.SEGMENTATION, "apple/deeplabv3-mobilevit-small",
            loader="transformers.AutoModelForSemanticSegmentation", torch_dtype="float32",
            options={"background_label_ids": [0]}),
        Role.LLM: ModelSpec(
            Role.LLM, "Qwen/Qwen2.5-1.5B-Instruct",
            loader="transformers.AutoModelForCausalLM", torch_dtype="bfloat16"),
        # The judge that looks at images: an instruct VLM of the same family as the llm role,
        # loaded through the image-text-to-text auto class (SmolVLM, LLaVA... work the same way).
        Role.VLM: ModelSpec(
            Role.VLM, "Qwen/Qwen2.5-VL-3B-Instruct",
            loader="transformers.AutoModelForImageTextToText", torch_dtype="bfloat16"),
        # Prompt alignment: CLIP ViT-L/14, the text encoder family of SD/SDXL prompts.
        Role.CLIP: ModelSpec(
            Role.CLIP, "openai/clip-vit-large-patch14", loader="transformers.CLIPModel"),
        # Deployment-specific adapters: none are public defaults. Configure one LoraSource per
        # slot (e.g. ModelRegistry.from_env: COMPUTE_LORA_STYLE=org/repo:file.safetensors).
        Role.LORA: ModelSpec(Role.LORA, "", loader="pipe.load_lora_weights"),
        Role.IP_ADAPTER: ModelSpec(
            Role.IP_ADAPTER, "h94/IP-Adapter", loader="pipe.load_ip_adapter",
            ip_adapter=IpAdapterSource("h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.bin")),
    }


def _offline_specs() -> dict[Role, ModelSpec]:
    """The same roles and loaders, backed by the tiny builds (model_id filled in lazily)."""
    return {role: replace(spec, model_id="", torch_dtype="float32", variant=None, revision=None,
                          lora={}, ip_adapter=None)
            for role, spec in production_specs().items()}


# LoRA references the offline profile resolves out of the box (tiny random adapters, one per
# name, built under the LoRA root on first use): what the README's catalog example names, so
# `catalog add-subject "Anna" --lora demo/anna` works on the local stack. Production has none.
OFFLINE_DEMO_LORAS: tuple[str, ...] = ("demo/anna", "demo/summer-dress", "demo/studio-style")


class ModelRegistry:
    """Resolves roles to loadable paths/ids for one profile.

    ``path_for(role)`` in the offline profile builds the tiny model on first use (under a file
    lock, so concurrent worker processes build it once) and returns its folder; later calls and
    later processes reuse the folder. In production it returns the configured id unchanged.
    """

    def __init__(
        self,
        profile: ModelProfile | str = ModelProfile.OFFLINE,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        specs: Mapping[Role | str, ModelSpec] | None = None,
        offline_configs: Mapping[str, Mapping[str, Any]] | None = None,
        lora_root: str | os.PathLike[str] | None = None,
        lora_allowed_repos: Iterable[str] = (),
    ) -> None:
        self.profile = ModelProfile(profile)
        self.cache_dir = Path(cache_dir or _default_cache_dir()).expanduser()
        # Where task LoRA references resolve to folders (resolve_lora_ref); hub repos a
        # reference may name in production (fnmatch patterns on "org/repo"; none by default).
        self.lora_root = Path(lora_root).expanduser() if lora_root else self.cache_dir / "loras"
        self.lora_allowed_repos = tuple(p.strip() for p in lora_allowed_repos if p.strip())
        base = production_specs() if self.profile is ModelProfile.PRODUCTION else _offline_specs()
        for role, spec in (specs or {}).items():
            base[Role(role)] = spec
        self._specs = base
        from gpu_consumers.models import offline

        self._configs = offline.default_configs()
        for role, cfg in (offline_configs or {}).items():
            self._configs[Role(role).value] = dict(cfg)
        # LoRA and IP-Adapter weights must fit the text-to-image UNet: keep them in sync (and
        # thereby make their cache keys change when the UNet config does).
        unet = self._configs[Role.TEXT_TO_IMAGE.value]["unet"]
        for role in (Role.LORA, Role.IP_ADAPTER):
            self._configs[role.value] = {**self._configs[role.value], "unet": unet}
        self._resolved: dict[Role, str] = {}  # paths only, never models

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ModelRegistry:
        """Profile, cache and production ids from the environment.

        ``COMPUTE_MODEL_PROFILE`` (offline|production, default offline),
        ``COMPUTE_MODEL_CACHE_DIR`` (default ~/.cache/compute-server/models);
        production only: ``COMPUTE_MODEL_<ROLE>`` (hub id or local folder, e.g.
        COMPUTE_MODEL_TEXT_TO_IMAGE), ``COMPUTE_LORA_<NAME>`` (``id_or_dir[:weight_name]``, NAME
        one of LORA_ADAPTERS) and ``COMPUTE_IP_ADAPTER`` (``id_or_dir:subfolder:weight_name``).
        Task LoRA references (:meth:`resolve_lora_ref`): ``COMPUTE_LORA_ROOT`` (default
        ``<cache dir>/loras``) and, production only, ``COMPUTE_LORA_ALLOWED_REPOS``
        (comma-separated patterns such as ``studio/*``; default none).
        """
        env = os.environ if environ is None else environ
        profile = ModelProfile(env.get("COMPUTE_MODEL_PROFILE", ModelProfile.OFFLINE))
        overrides: dict[Role, ModelSpec] = {}
        allowed: list[str] = []
        if profile is ModelProfile.PRODUCTION:
            specs = production_specs()
            for role in Role:
                value = env.get(f"COMPUTE_MODEL_{role.value.upper()}")
                if value and role not in (Role.LORA, Role.IP_ADAPTER):  # those have own vars
                    overrides[role] = replace(specs[role], model_id=value)
            loras = {}
            for name in LORA_ADAPTERS:
                if value := env.get(f"COMPUTE_LORA_{name.upper()}"):
                    model_id, _, weight = value.partition(":")
                    loras[name] = LoraSource(model_id, weight or None)
            if loras:
                overrides[Role.LORA] = replace(specs[Role.LORA], lora=loras)
            if value := env.get("COMPUTE_IP_ADAPTER"):
                model_id, subfolder, weight = (value.split(":") + ["", ""])[:3]
                overrides[Role.IP_ADAPTER] = replace(
                    specs[Role.IP_ADAPTER], model_id=model_id,
                    ip_adapter=IpAdapterSource(model_id, subfolder, weight or "ip-adapter.bin"))
            allowed = env.get("COMPUTE_LORA_ALLOWED_REPOS", "").split(",")
        return cls(profile, env.get("COMPUTE_MODEL_CACHE_DIR"), specs=overrides,
                   lora_root=env.get("COMPUTE_LORA_ROOT") or None, lora_allowed_repos=allowed)

    # ---- resolution --------------------------------------------------------------------------

    def spec(self, role: Role | str) -> ModelSpec:
        role = Role(role)
        spec = self._specs[role]
        if self.profile is ModelProfile.OFFLINE:
            spec = replace(spec, model_id=self.path_for(role))
            if role is Role.LORA:
                spec = replace(spec, lora=self.lora_sources())
            elif role is Role.IP_ADAPTER:
                spec = replace(spec, ip_adapter=self.ip_adapter_source())
        return spec

    def path_for(self, role: Role | str) -> str:
        """Local folder (offline: built on first use) or production id for ``role``."""
        role = Role(role)
        if self.profile is ModelProfile.PRODUCTION:
            return self._specs[role].model_id
        if role not in self._resolved:
            self._resolved[role] = str(self._ensure_built(role))
        return self._resolved[role]

    def load_kwargs(self, role: Role | str) -> dict[str, Any]:
        """Keyword arguments for the handler's ``from_pretrained`` call."""
        import torch

        spec = self._specs[Role(role)]
        kwargs: dict[str, Any] = {"torch_dtype": getattr(torch, spec.torch_dtype)}
        if spec.variant:
            kwargs["variant"] = spec.variant
        if spec.revision:
            kwargs["revision"] = spec.revision
        if self.profile is ModelProfile.OFFLINE:
            kwargs["local_files_only"] = True  # a belt to HF_HUB_OFFLINE's braces
        return kwargs

    def pretrained_kwargs(self, role: Role | str) -> dict[str, Any]:
        """The ``revision`` and ``local_files_only`` of :meth:`load_kwargs`: for ``from_pretrained``
        calls that take no dtype or variant (configs, tokenizers, processors)."""
        return {k: v for k, v in self.load_kwargs(role).items()
                if k in ("revision", "local_files_only")}

    def lora_sources(self) -> dict[str, LoraSource]:
        """Adapter name -> file, for ``pipe.load_lora_weights(..., adapter_name=name)``."""
        if self.profile is ModelProfile.PRODUCTION:
            return dict(self._specs[Role.LORA].lora)
        folder = self.path_for(Role.LORA)
        return {name: LoraSource(folder, f"{name}.safetensors")
                for name in self._configs[Role.LORA.value]["adapters"]}

    def resolve_lora_ref(self, reference: str) -> ResolvedLora:
        """A task's LoRA reference as a file to load (:func:`loras.resolve_lora_ref`): under
        ``lora_root``, or in the production profile a hub repo of ``lora_allowed_repos``. The
        offline profile's demo LoRAs (:data:`OFFLINE_DEMO_LORAS`) are built on first use, as
        its tiny models are."""
        if self.profile is ModelProfile.OFFLINE and reference in OFFLINE_DEMO_LORAS:
            return self.build_offline_lora(reference)
        hub = self.lora_allowed_repos if self.profile is ModelProfile.PRODUCTION else None
        return resolve_lora_ref(reference, self.lora_root, hub)

    def build_offline_lora(self, name: str) -> ResolvedLora:
        """Offline profile: a tiny random LoRA for the reference ``name`` (a plain relative
        name), written once to ``<lora_root>/<name>/pytorch_lora_weights.safetensors`` with
        weights seeded from the name, so each name is a different adapter and the real loading
        path runs. For tests and demos; the worker never builds one for a task."""
        if self.profile is not ModelProfile.OFFLINE:
            raise ValueError("build_offline_lora is for the offline profile only")
        match = LORA_REF.fullmatch(name)
        if match is None or match["hub"] or match["weight"]:
            raise LoraRefError(f"{name!r} is not a plain relative LoRA name")
        from gpu_consumers.models import offline

        target = self.lora_root / name / LORA_WEIGHT_NAME
        if not target.is_file():
            self.lora_root.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.lora_root / ".build.lock")):
                if not target.is_file():
                    staging = target.with_name(f".{os.getpid()}.staging.safetensors")
                    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
                    offline.build_lora_file(staging, self._configs[Role.LORA.value], seed)
                    os.replace(staging, target)
        return resolve_lora_ref(name, self.lora_root, None)

    def ip_adapter_source(self) -> IpAdapterSource | None:
        if self.profile is ModelProfile.PRODUCTION:
            return self._specs[Role.IP_ADAPTER].ip_adapter
        return IpAdapterSource(self.path_for(Role.IP_ADAPTER), "", "ip-adapter.safetensors")

    def prepare(self, roles: Iterable[Role | str] | None = None) -> dict[Role, str]:
        """Resolve (offline: build) several roles up front, e.g. at worker start or in a demo."""
        return {Role(r): self.path_for(r) for r in (roles if roles is not None else Role)}

    # ---- offline cache -----------------------------------------------------------------------

    def offline_config(self, role: Role | str) -> dict[str, Any]:
        return json.loads(json.dumps(self._configs[Role(role).value]))

    def cache_key(self, role: Role | str) -> str:
        """``<role>-<hash>``: the hash covers the config, the builder version and the library
        versions that wrote the files, so any change gets a fresh folder instead of a stale one."""
        import diffusers
        import transformers

        from gpu_consumers.models import offline

        role = Role(role)
        payload = json.dumps(
            {"config": self._configs[role.value], "builder": offline.BUILDER_VERSION,
             "diffusers": diffusers.__version__, "transformers": transformers.__version__},
            sort_keys=True,
        )
        return f"{role.value}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"

    def _ensure_built(self, role: Role) -> Path:
        from gpu_consumers.models import offline

        key = self.cache_key(role)
        target = self.cache_dir / key
        if _is_complete(target):
            return target  # fast path: no lock once built
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.cache_dir / f".{key}.lock")):
            if _is_complete(target):  # another process built it while we waited
                return target
            if target.exists():  # leftovers of an interrupted build
                shutil.rmtree(target)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.cache_dir))
            try:
                offline.build(role.value, staging, self._configs[role.value])
                # Rename last: readers only ever see a complete folder (same filesystem).
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return target


def _is_complete(folder: Path) -> bool:
    # offline.build writes this file last.
    return (folder / "offline_build.json").is_file()


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "compute-server" / "models"


def image_processor_class(model_path_or_id: str, **kwargs: Any) -> type:
    """The image processor class to call ``from_pretrained`` on for a transformers vision model.

    Why not ``AutoImageProcessor``: in transformers 5.17 the auto class is flagged as needing
    torchvision (its module mentions the torchvision backend), so it raises without torchvision,
    which this project does not install (no torchvision release matches torch 2.15 yet). This
    reads ``image_processor_type`` from the model's preprocessor config and picks that class, or
    its PIL-backend twin (``<Name>Pil``) when torchvision is missing.
    """
    import transformers
    from transformers.image_processing_base import ImageProcessingMixin

    config, _ = ImageProcessingMixin.get_image_processor_dict(model_path_or_id, **kwargs)
    name = config["image_processor_type"].removesuffix("Fast")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pil = getattr(transformers, f"{name.removesuffix('Pil')}Pil", None)
        if pil is not None:
            return pil
    return getattr(transformers, name)
