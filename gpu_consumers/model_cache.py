"""The warm model cache a worker keeps for its lifetime (ARCHITECTURE.md §5).

Every model loads once, on first use, through the loader its :class:`~gpu_consumers.models.ModelSpec`
names (``spec.loader.from_pretrained(path, **registry.load_kwargs(role))``) and stays resident.
The img2img and "legacy" inpainting pipelines are *derived* from the text-to-image pipeline with
``from_pipe``: they share its UNet, VAE and text encoder, so they cost no memory and see the same
adapters. The dedicated inpainting model is a separate family with its own UNet.

Adapters are per-task state kept on a shared UNet, so :meth:`ModelCache.prepare` must be called
before every pipeline call (the handlers do): it switches the task's LoRA weights (or turns LoRA
off, so a REFINE after a GENERATION never inherits its style LoRA), sets the IP-Adapter scale and
returns the keyword arguments the call needs, and applies ``low_memory``.

* LoRA (:meth:`apply_loras`): a task weights *slots* (``subject``, ``product``, ...). A slot
  the task names a reference for (``refs``, from ``provider_config.loras``) uses the adapter that
  reference resolves to (:meth:`ModelRegistry.resolve_lora_ref`: a folder under the LoRA root, or
  an allowed hub repo; safetensors only), named ``ref_<hash>`` after what it resolved to; any
  other slot uses the deployment's adapter for that slot, named after the slot. Each adapter
  loads once (``load_lora_weights(path, adapter_name=name)``) and is switched per task with
  ``set_adapters(names, weights)``. At most ``lora_capacity`` adapters stay loaded; the least
  recently used is dropped with ``delete_adapters``. All weights None or 0 ->
  ``disable_lora()``, so the output equals no LoRA.
  ``last_lora_switch`` records the last switch and its time (loading excluded; about 2 ms on the
  tiny models, see ``bench/bench_lora_switch.py``).
* IP-Adapter (:meth:`prepare` with ``reference``): loaded on the family's first task with a
  reference image. Once loaded, the UNet expects image embeddings in every call, so a task without
  a reference runs with scale 0 and a blank image, which gives exactly the no-adapter output.
* ``low_memory`` (the runtime's retry after a GPU out-of-memory): VAE tiling and slicing on, where
  the VAE implements them; off again for the next normal task, so outputs do not depend on history.

Thread-safety: the runtime runs one task at a time per worker, and pipelines are not re-entrant.
Loading and adapter switching are serialised by one lock (a handler abandoned after a timeout may
still be finishing a step while the next task starts; its cancel token stops it at that step), but
two tasks must never run pipelines of one cache concurrently.
"""

from __future__ import annotations

import importlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_consumers.errors import InvalidInput, ProviderError
from gpu_consumers.models import (
    LORA_ADAPTERS,
    LoraRefError,
    LoraSource,
    ModelProfile,
    ModelRegistry,
    Role,
    image_processor_class,
)

# Denoising steps when neither the task (provider_config) nor the spec's options say: what the
# production models are usually run with, and 2 for the tiny offline models (CPU seconds).
DEFAULT_STEPS: dict[ModelProfile, dict[Role, int]] = {
    ModelProfile.PRODUCTION: {Role.TEXT_TO_IMAGE: 30, Role.INPAINT: 30, Role.IMAGE_TO_VIDEO: 25},
    ModelProfile.OFFLINE: {Role.TEXT_TO_IMAGE: 2, Role.INPAINT: 2, Role.IMAGE_TO_VIDEO: 2},
}
# An IP-Adapter image encoder resizes to 224 px anyway; this is only a placeholder with scale 0.
BLANK_REFERENCE_PX = 64


@dataclass
class _Family:
    """Pipelines sharing one UNet, and the adapter state living on it."""

    root: Any
    members: list[Any]
    loras: OrderedDict[str, None] = field(default_factory=OrderedDict)  # loaded names, LRU order
    lora_enabled: bool = False
    ip_loaded: bool = False


@dataclass(frozen=True)
class Segmenter:
    """A semantic segmentation model, its image processor and the ids of its background labels."""

    model: Any
    processor: Any
    background_ids: tuple[int, ...]


@dataclass(frozen=True)
class LoraSwitch:
    """What :meth:`ModelCache.apply_loras` set: the active adapters and weights, and its time
    (``loaded``: the adapters that had to be loaded first; their loading is not in the time)."""

    names: tuple[str, ...]
    weights: tuple[float, ...]
    switch_ms: float
    loaded: tuple[str, ...] = ()


@dataclass(frozen=True)
class SlotLora:
    """The adapter serving one weighted slot of a task: ``reference`` None is the deployment's
    adapter for the slot."""

    slot: str
    adapter_name: str
    source: LoraSource
    reference: str | None = None


def _import(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


class ModelCache:
    def __init__(self, registry: ModelRegistry, device: str = "cpu", lora_capacity: int = 8) -> None:
        if lora_capacity < 1:
            raise ValueError("lora_capacity must be at least 1")
        self.registry = registry
        self.device = device
        self.lora_capacity = lora_capacity
        self.last_lora_switch: LoraSwitch | None = None
        self._lock = threading.RLock()
        self._models: dict[str, Any] = {}
        self._families: dict[int, _Family] = {}  # id(denoiser) -> family

    @classmethod
    def for_context(cls, ctx: Any) -> ModelCache:
        """``ctx.models`` as a cache: the runtime should pass a ModelCache; a bare ModelRegistry
        gets one cache per registry for its lifetime (so the models still stay warm)."""
        models = ctx.models
        if isinstance(models, ModelCache):
            return models
        if isinstance(models, ModelRegistry):
            with _ADOPT_LOCK:
                cache = _ADOPTED.get(models)
                if cache is None:
                    cache = _ADOPTED[models] = cls(models, ctx.device)
                return cache
        raise ProviderError("this worker has no model cache (TaskContext.models is "
                            f"{type(models).__name__}); start it with a ModelCache")

    def model_id(self, role: Role | str) -> str:
        """The id a result records: the production id, or ``offline:<cache folder>``."""
        if self.registry.profile is ModelProfile.OFFLINE:
            return f"offline:{Path(self.registry.path_for(role)).name}"
        return self.registry.path_for(role)

    def default_steps(self, role: Role | str) -> int:
        role = Role(role)
        steps = self.registry.spec(role).options.get("num_inference_steps")
        return int(steps or DEFAULT_STEPS[self.registry.profile].get(role, 2))

    def _load(self, key: str, build: Any) -> Any:
        with self._lock:
            if key not in self._models:
                self._models[key] = build()
            return self._models[key]

    def _from_pretrained(self, role: Role) -> Any:
        spec = self.registry.spec(role)
        loaded = _import(spec.loader).from_pretrained(self.registry.path_for(role),
                                                      **self.registry.load_kwargs(role))
        loaded = loaded.to(self.device)
        if hasattr(loaded, "set_progress_bar_config"):
            loaded.set_progress_bar_config(disable=True)  # progress goes through ctx.progress
        return loaded

    def _new_family(self, pipe: Any) -> Any:
        self._families[id(_denoiser(pipe))] = _Family(root=pipe, members=[pipe])
        return pipe

    def _derive(self, key: str, auto_class: str) -> Any:
        def build() -> Any:
            base = self.text_to_image()
            pipe = _import(f"diffusers.{auto_class}").from_pipe(base)
            pipe.set_progress_bar_config(disable=True)
            self._families[id(_denoiser(base))].members.append(pipe)
            return pipe

        return self._load(key, build)

    def text_to_image(self) -> Any:
        return self._load("text_to_image", lambda: self._new_family(
            self._from_pretrained(Role.TEXT_TO_IMAGE)))

    def img2img(self) -> Any:
        """Derived from :meth:`text_to_image` with ``AutoPipelineForImage2Image.from_pipe``."""
        return self._derive("img2img", "AutoPipelineForImage2Image")

    def inpaint_from_base(self) -> Any:
        """Derived from :meth:`text_to_image` (masked latent blending on the base UNet)."""
        return self._derive("inpaint_from_base", "AutoPipelineForInpainting")

    def inpaint(self) -> Any:
        """The dedicated inpainting model (its UNet also sees the mask and the masked image)."""
        return self._load("inpaint", lambda: self._new_family(self._from_pretrained(Role.INPAINT)))

    def image_to_video(self) -> Any:
        return self._load("image_to_video", lambda: self._from_pretrained(Role.IMAGE_TO_VIDEO))

    def segmentation(self) -> Segmenter:
        def build() -> Segmenter:
            path = self.registry.path_for(Role.SEGMENTATION)
            model = self._from_pretrained(Role.SEGMENTATION).eval()
            processor = image_processor_class(path).from_pretrained(path)
            ids = self.registry.spec(Role.SEGMENTATION).options.get("background_label_ids")
            if ids is None:
                ids = [i for i, name in model.config.id2label.items() if name == "background"] or [0]
            return Segmenter(model, processor, tuple(int(i) for i in ids))

        return self._load("segmentation", build)

    def _with_preprocessor(self, role: Role, loader: str) -> tuple[Any, Any]:
        """(model, its tokenizer or processor loaded with ``loader``), for transformers roles."""
        path = self.registry.path_for(role)
        kwargs = self.registry.pretrained_kwargs(role)
        return self._from_pretrained(role).eval(), _import(loader).from_pretrained(path, **kwargs)

    def llm(self) -> tuple[Any, Any]:
        """(causal LM, tokenizer)."""
        return self._load("llm", lambda: self._with_preprocessor(
            Role.LLM, "transformers.AutoTokenizer"))

    def _judge(self, role: Role, processor: str) -> tuple[Any, Any]:
        from gpu_consumers.models.judges import check_judge_model, read_config

        # The start-up check may have been skipped (a hub config out of reach then).
        check_judge_model(self.registry, role, read_config(self.registry, role))
        return self._with_preprocessor(role, processor)

    def vlm(self) -> tuple[Any, Any]:
        """(image-text-to-text model, its processor: chat template, image and text inputs)."""
        return self._load("vlm", lambda: self._judge(Role.VLM, "transformers.AutoProcessor"))

    def clip(self) -> tuple[Any, Any]:
        """(CLIP dual encoder, CLIPProcessor)."""
        return self._load("clip", lambda: self._judge(Role.CLIP, "transformers.CLIPProcessor"))

    def prepare(self, pipe: Any, *, loras: Mapping[str, float | None] | None = None,
                lora_refs: Mapping[str, str] | None = None,
                reference: Any = None, reference_scale: float = 0.0,
                low_memory: bool = False) -> dict[str, Any]:
        """Put ``pipe``'s shared state in this task's shape; returns extra call kwargs."""
        with self._lock:
            set_low_memory(pipe, low_memory)
            family = self._families.get(id(_denoiser(pipe)))
            if family is None:  # a pipeline without adapters (video)
                return {}
            self.apply_loras(pipe, loras or {}, lora_refs)
            return self._reference(family, reference, reference_scale)

    def apply_loras(self, pipe: Any, weights: Mapping[str, float | None],
                    refs: Mapping[str, str] | None = None) -> LoraSwitch:
        """Load (once) and activate the adapters of the slots with a weight > 0 (``refs``: slot
        -> the task's LoRA reference, see :meth:`check_loras`); all None/0 turns LoRA off."""
        with self._lock:
            family = self._families[id(_denoiser(pipe))]
            if not any(weights.values()):
                started = time.perf_counter()
                if family.lora_enabled:
                    family.root.disable_lora()
                    family.lora_enabled = False
                self.last_lora_switch = LoraSwitch((), (), (time.perf_counter() - started) * 1e3)
                return self.last_lora_switch
            slots = self.check_loras(weights, refs)
            # Adapter -> weight; two slots naming one LoRA add up (the LoRA delta is linear in it).
            active: dict[str, float] = {}
            sources: dict[str, LoraSource] = {}
            for slot, lora in slots.items():
                active[lora.adapter_name] = active.get(lora.adapter_name, 0.0) + float(weights[slot])
                sources[lora.adapter_name] = lora.source
            loaded = []
            for name in active:
                if name in family.loras:
                    family.loras.move_to_end(name)
                    continue
                while len(family.loras) >= self.lora_capacity:
                    victim = next(n for n in family.loras if n not in active)
                    family.root.delete_adapters(victim)
                    del family.loras[victim]
                source = sources[name]
                extra = {"use_safetensors": True} if source.safetensors_only else {}
                try:
                    family.root.load_lora_weights(source.model_id, weight_name=source.weight_name,
                                                  adapter_name=name, **extra)
                except Exception as exc:
                    _forget_adapter(family.root, name)  # a half-loaded adapter would block a retry
                    # A referenced file under the LoRA root that does not load (not a LoRA, or one
                    # for another model) is the task's problem. Anything else, hub downloads
                    # included, goes to the runtime as usual (retried as a provider error).
                    local = source.safetensors_only and Path(source.model_id).is_absolute()
                    if not (local and isinstance(exc, _BAD_LORA_FILE)):
                        raise
                    ref = next(s.reference for s in slots.values() if s.adapter_name == name)
                    raise InvalidInput(f"LoRA reference {ref!r} could not be loaded: {exc}") from exc
                family.loras[name] = None
                loaded.append(name)
            started = time.perf_counter()  # the switch itself, loading excluded
            if not family.lora_enabled:
                family.root.enable_lora()
                family.lora_enabled = True
            names = tuple(active)
            family.root.set_adapters(list(names), adapter_weights=[active[n] for n in names])
            self.last_lora_switch = LoraSwitch(names, tuple(active[n] for n in names),
                                               (time.perf_counter() - started) * 1e3, tuple(loaded))
            return self.last_lora_switch

    def check_loras(self, weights: Mapping[str, float | None],
                    refs: Mapping[str, str] | None = None) -> dict[str, SlotLora]:
        """The adapter of every slot weighted > 0; INVALID_INPUT unless each resolves and they
        fit at once. Every reference in ``refs`` (slot -> reference) is resolved, weighted or
        not (:meth:`ModelRegistry.resolve_lora_ref`); a weighted slot without one needs the
        deployment's adapter for that slot."""
        refs = dict(refs or {})
        unknown = sorted(set(refs) - set(LORA_ADAPTERS))
        if unknown:
            raise InvalidInput(f"LoRA references for unknown slot(s) {', '.join(unknown)} "
                               f"(slots: {', '.join(LORA_ADAPTERS)})")
        resolved = {}
        for slot, reference in refs.items():
            try:
                resolved[slot] = self.registry.resolve_lora_ref(reference)
            except LoraRefError as exc:
                raise InvalidInput(f"{slot}: {exc}") from exc
        active = [slot for slot, weight in weights.items() if weight]
        plain = [slot for slot in active if slot not in resolved]
        configured = self.registry.lora_sources() if plain else {}
        missing = sorted(set(plain) - set(configured))
        if missing:
            raise InvalidInput(f"no LoRA is configured for {', '.join(missing)} on this worker "
                               f"(configured: {', '.join(sorted(configured)) or 'none'}) and the "
                               f"task names no reference for it")
        slots = {slot: (SlotLora(slot, resolved[slot].adapter_name, resolved[slot].source,
                                 resolved[slot].reference) if slot in resolved
                        else SlotLora(slot, slot, configured[slot])) for slot in active}
        adapters = {lora.adapter_name for lora in slots.values()}
        if len(adapters) > self.lora_capacity:
            raise InvalidInput(f"{len(adapters)} LoRAs at once; this worker keeps at most "
                               f"{self.lora_capacity} loaded")
        return slots

    def loaded_loras(self, pipe: Any) -> list[str]:
        """Adapter names currently loaded on ``pipe``'s UNet, least recently used first."""
        return list(self._families[id(_denoiser(pipe))].loras)

    def _reference(self, family: _Family, image: Any, scale: float) -> dict[str, Any]:
        if image is None and not family.ip_loaded:
            return {}
        if not family.ip_loaded:
            source = self.registry.ip_adapter_source()
            if source is None:
                raise InvalidInput("reference images need an IP-Adapter, and none is configured "
                                   "on this worker")
            family.root.load_ip_adapter(source.model_id, subfolder=source.subfolder,
                                        weight_name=source.weight_name,
                                        image_encoder_folder=source.image_encoder_folder)
            family.ip_loaded = True
            for member in family.members:  # pipes derived earlier lack the new components
                if member is not family.root:
                    member.register_modules(image_encoder=family.root.image_encoder,
                                            feature_extractor=family.root.feature_extractor)
        from PIL import Image

        family.root.set_ip_adapter_scale(float(scale) if image is not None else 0.0)
        blank = Image.new("RGB", (BLANK_REFERENCE_PX, BLANK_REFERENCE_PX))
        return {"ip_adapter_image": image if image is not None else blank}


def _bad_lora_file_errors() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors comes with diffusers
        return (OSError, ValueError, KeyError)
    return (OSError, ValueError, KeyError, SafetensorError)


_BAD_LORA_FILE = _bad_lora_file_errors()


def _forget_adapter(pipe: Any, name: str) -> None:
    try:
        if name in {n for names in pipe.get_list_adapters().values() for n in names}:
            pipe.delete_adapters(name)
    except Exception:  # noqa: BLE001 - best effort; the load error is what the caller reports
        pass


def _denoiser(pipe: Any) -> Any:
    """The module a pipeline family shares and adapters live on: the UNet of SD/SDXL-class
    pipelines, the transformer of FLUX/SD3-class ones; None for a pipeline without either."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else getattr(pipe, "transformer", None)


def set_low_memory(pipe: Any, on: bool) -> None:
    """VAE tiling and slicing on or off, where the pipeline's VAE implements them."""
    vae = getattr(pipe, "vae", None)
    for feature in ("tiling", "slicing"):
        if vae is not None and hasattr(vae, f"use_{feature}"):
            getattr(vae, f"{'enable' if on else 'disable'}_{feature}")()


_ADOPT_LOCK = threading.Lock()
_ADOPTED: weakref.WeakKeyDictionary[ModelRegistry, ModelCache] = weakref.WeakKeyDictionary()
