"""Tiny random-weight models for the offline profile.

Nothing can be downloaded here, yet the handlers must run the real diffusers/transformers code
paths (``from_pretrained``, pipelines, ``load_lora_weights``, ``load_ip_adapter``, ``generate``).
So each builder below constructs a model *from a config* with tiny dimensions, the way the
libraries' own fast tests build dummy components, seeds it with ``torch.manual_seed`` so a given
config always yields the same weights, and writes it with ``save_pretrained`` (or the library's
own LoRA / IP-Adapter file format). Callers load the result back with ``from_pretrained(path)``,
exactly as they would a downloaded production model.

Every builder has the signature ``builder(out_dir: Path, config: dict) -> None`` and writes a
complete, self-contained folder. Configs are plain JSON-able dicts so that the registry can hash
them (the hash names the cache folder: change a config, get a fresh build).

Sizes are chosen for CPU speed: images are meant to be 32x32 or 64x64 with 2 inference steps;
the outputs are noise-like but have the real shapes, modes and seed behaviour.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gpu_consumers.models import offline_vision
from gpu_consumers.models.vocab import build_chat_tokenizer, write_clip_tokenizer_files

Builder = Callable[[Path, dict[str, Any]], None]

# Bumped whenever a builder changes in a way a config hash can't see; part of every cache key.
BUILDER_VERSION = 1

# --------------------------------------------------------------------------------------------
# Default offline configs. Dimensions follow the libraries' fast-test components, slimmed where
# that costs nothing (fewer layers), so that a 2-core CPU runs each model in well under a second.
# --------------------------------------------------------------------------------------------

_SD_UNET: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "sample_size": 32,  # default output 64x64 (VAE with two blocks downsamples by 2)
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}
_SD_VAE: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "latent_channels": 4,
}
_CLIP_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
    "max_position_embeddings": 77,
    "layer_norm_eps": 1e-5,
}
_SD_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def default_configs() -> dict[str, dict[str, Any]]:
    """The offline config of every role (fresh copies: callers may modify them)."""
    text_to_image = {"seed": 0, "unet": _SD_UNET, "vae": _SD_VAE, "text_encoder": _CLIP_TEXT,
                     "scheduler": _SD_SCHEDULER}
    inpaint = copy.deepcopy(text_to_image)
    # A dedicated inpainting UNet takes noisy latents (4) + mask (1) + masked-image latents (4).
    inpaint["unet"] = {**_SD_UNET, "in_channels": 9}
    inpaint["seed"] = 1
    configs: dict[str, dict[str, Any]] = {
        "text_to_image": text_to_image,
        "inpaint": inpaint,
        # LoRA and IP-Adapter weights only fit the UNet they were made for, so their configs
        # embed that UNet config (and therefore its hash).
        "lora": {
            "seed": 2,
            "unet": _SD_UNET,
            "adapters": ["subject", "product", "style", "product2"],
            "rank": 4,
            "std": 0.5,  # large enough that a weight of 1.0 visibly changes a tiny model's image
            "target_modules": ["to_q", "to_k", "to_v", "to_out.0"],
        },
        "ip_adapter": {
            "seed": 3,
            "unet": _SD_UNET,
            "image_encoder": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                              "num_hidden_layers": 2, "projection_dim": 32, "image_size": 32,
                              "patch_size": 8},
            "std": 0.5,
        },
        "image_to_video": {
            "seed": 4,
            "unet": {
                "block_out_channels": [32, 64],
                "layers_per_block": 1,
                "sample_size": 32,
                "in_channels": 8,  # noisy latents + conditioning-image latents
                "out_channels": 4,
                "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
                "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
                "cross_attention_dim": 32,
                "num_attention_heads": 8,
                # three added time ids (fps, motion_bucket_id, noise_aug_strength) x 32
                "projection_class_embeddings_input_dim": 96,
                "addition_time_embed_dim": 32,
            },
            "vae": {"block_out_channels": [32, 64], "in_channels": 3, "out_channels": 3,
                    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                    "latent_channels": 4},
            # The SVD pipeline resizes PIL inputs to 224x224 for its CLIP encoder, so the tiny
            # encoder must accept 224 (with 32-pixel patches that is only 49 tokens).
            "image_encoder": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                              "num_hidden_layers": 2, "projection_dim": 32, "image_size": 224,
                              "patch_size": 32},
        },
        "segmentation": {
            "seed": 5,
            "image_size": 64,
            "labels": ["background", "foreground"],
            "model": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                      "intermediate_size": 37, "patch_size": 8,
                      "backbone_out_indices": [0, 1, 2, 3],
                      "neck_hidden_sizes": [16, 16, 32, 32], "fusion_hidden_size": 16,
                      "reassemble_factors": [4, 2, 1, 0.5], "use_auxiliary_head": False},
        },
        "llm": {
            "seed": 6,
            "tokenizer_vocab_size": 512,
            "model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2,
                      "max_position_embeddings": 512, "tie_word_embeddings": True,
                      # Far above the usual 0.02: a random LM with tiny weights emits one token
                      # over and over; larger weights make outputs depend on the prompt.
                      "initializer_range": 0.5},
        },
        **offline_vision.default_configs(),  # vlm, clip
    }
    return copy.deepcopy(configs)


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def _clip_text_parts(out_dir: Path, cfg: dict[str, Any], seed: int):
    """CLIP text encoder + tokenizer written from the local vocab (ids must agree)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_dir = out_dir / "_vocab"
    ids = write_clip_tokenizer_files(vocab_dir)
    tokenizer = CLIPTokenizer.from_pretrained(
        vocab_dir, model_max_length=cfg["max_position_embeddings"]
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(**cfg, vocab_size=ids["vocab_size"], bos_token_id=ids["bos_token_id"],
                       eos_token_id=ids["eos_token_id"], pad_token_id=ids["eos_token_id"])
    )
    return text_encoder, tokenizer, vocab_dir


def _build_sd(out_dir: Path, cfg: dict[str, Any], pipeline_cls) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    seed = cfg["seed"]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    torch.manual_seed(seed)
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder, tokenizer, vocab_dir = _clip_text_parts(out_dir, cfg["text_encoder"], seed)
    pipe = pipeline_cls(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DDIMScheduler(**cfg["scheduler"]),
        # Production SD-class checkpoints ship without (or are loaded without) these.
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    _rmtree(vocab_dir)  # the tokenizer folder inside the pipeline now holds the vocabulary


def build_text_to_image(out_dir: Path, cfg: dict[str, Any]) -> None:
    """A StableDiffusionPipeline; img2img/inpaint pipelines derive from it with ``from_pipe``."""
    from diffusers import StableDiffusionPipeline

    _build_sd(out_dir, cfg, StableDiffusionPipeline)


def build_inpaint(out_dir: Path, cfg: dict[str, Any]) -> None:
    """A StableDiffusionInpaintPipeline with a dedicated 9-channel inpainting UNet."""
    from diffusers import StableDiffusionInpaintPipeline

    _build_sd(out_dir, cfg, StableDiffusionInpaintPipeline)


def _unet_attention_linears(unet_cfg: dict[str, Any], targets: list[str]):
    """(module name, in_features, out_features) of every attention projection LoRA targets."""
    from diffusers import UNet2DConditionModel

    # Built on the meta device: only names and shapes are needed, not weights.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
    found = []
    for name, module in unet.named_modules():
        if (isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in targets)
                and (".attn1." in name or ".attn2." in name)):
            found.append((name, module.in_features, module.out_features))
    return found


def build_lora_set(out_dir: Path, cfg: dict[str, Any]) -> None:
    """One ``<adapter>.safetensors`` per adapter, in the diffusers (PEFT-keyed) LoRA format.

    The format is what ``StableDiffusionPipeline.save_lora_weights`` writes and what
    ``pipe.load_lora_weights(dir, weight_name=..., adapter_name=...)`` reads: keys
    ``unet.<module>.lora_A.weight`` (rank x in) and ``unet.<module>.lora_B.weight`` (out x rank).
    Unlike a freshly initialised PEFT LoRA (B = 0, a no-op) both matrices are random, so an
    adapter with weight > 0 really changes the image.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    linears = _unet_attention_linears(cfg["unet"], cfg["target_modules"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    for adapter in cfg["adapters"]:
        _save_lora(out_dir / f"{adapter}.safetensors", _lora_layers(linears, cfg, gen))


def build_lora_file(path: Path, cfg: dict[str, Any], seed: int) -> None:
    """One random LoRA file at ``path`` (a ``.safetensors`` name), in the format of
    :func:`build_lora_set`, for the UNet of ``cfg`` (the registry's ``lora`` config), its weights
    drawn from ``seed`` instead of ``cfg["seed"]``. The registry uses it to put a tiny LoRA under a
    reference's name into the LoRA root (:meth:`ModelRegistry.build_offline_lora`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    linears = _unet_attention_linears(cfg["unet"], cfg["target_modules"])
    with torch.random.fork_rng(devices=[]):
        _save_lora(path, _lora_layers(linears, cfg, torch.Generator().manual_seed(seed)))


def _lora_layers(linears, cfg: dict[str, Any], gen: torch.Generator) -> dict[str, torch.Tensor]:
    rank, std = cfg["rank"], cfg["std"]
    layers: dict[str, torch.Tensor] = {}
    for name, n_in, n_out in linears:
        layers[f"{name}.lora_A.weight"] = torch.randn(rank, n_in, generator=gen) * std
        layers[f"{name}.lora_B.weight"] = torch.randn(n_out, rank, generator=gen) * std
    return layers


def _save_lora(path: Path, layers: dict[str, torch.Tensor]) -> None:
    from diffusers import StableDiffusionPipeline

    # No alpha keys: diffusers then uses lora_alpha = rank, i.e. scale 1 per unit weight.
    StableDiffusionPipeline.save_lora_weights(path.parent, unet_lora_layers=layers, weight_name=path.name)


def build_ip_adapter(out_dir: Path, cfg: dict[str, Any]) -> None:
    """``ip-adapter.safetensors`` + ``image_encoder/`` in the layout ``load_ip_adapter`` reads.

    The original (non-"plus") IP-Adapter: an image projection (CLIP image embedding ->
    4 extra cross-attention tokens) and, for every cross-attention layer of the UNet, extra
    key/value projections ``to_k_ip`` / ``to_v_ip``. diffusers numbers those layers 1, 3, 5, ...
    in the order of ``unet.attn_processors`` (odd ids: the original checkpoints counted the
    self-attention layers too).
    """
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg["seed"])
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["image_encoder"]))
    encoder.save_pretrained(out_dir / "image_encoder")

    cad = cfg["unet"]["cross_attention_dim"]
    embed_dim = cfg["image_encoder"]["projection_dim"]
    gen = torch.Generator().manual_seed(cfg["seed"])
    std = cfg["std"]
    tensors = {
        "image_proj.proj.weight": torch.randn(4 * cad, embed_dim, generator=gen) * std,
        "image_proj.proj.bias": torch.zeros(4 * cad),
        "image_proj.norm.weight": torch.ones(cad),
        "image_proj.norm.bias": torch.zeros(cad),
    }
    key_id = 1
    for name, _n_in, n_out in _unet_attention_linears(cfg["unet"], ["to_k"]):
        if ".attn2." not in name:
            continue  # only cross-attention layers get image key/values
        for proj in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key_id}.{proj}.weight"] = (
                torch.randn(n_out, cad, generator=gen) * std)
        key_id += 2
    save_file({k: v.contiguous() for k, v in tensors.items()},
              str(out_dir / "ip-adapter.safetensors"))


def build_image_to_video(out_dir: Path, cfg: dict[str, Any]) -> None:
    """A StableVideoDiffusionPipeline (image -> N frames), as in diffusers' SVD fast tests."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    seed = cfg["seed"]
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(**cfg["unet"])
    torch.manual_seed(seed)
    vae = AutoencoderKLTemporalDecoder(**cfg["vae"])
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["image_encoder"]))
    size = cfg["image_encoder"]["image_size"]
    # The scheduler settings of the real SVD checkpoints (EDM-style Karras sigmas, v-prediction).
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        interpolation_type="linear", num_train_timesteps=1000, prediction_type="v_prediction",
        sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
        timestep_type="continuous", use_karras_sigmas=True,
    )
    pipe = StableVideoDiffusionPipeline(
        unet=unet, vae=vae, image_encoder=encoder, scheduler=scheduler,
        feature_extractor=_clip_image_processor(size),
    )
    pipe.save_pretrained(out_dir)


def _clip_image_processor(size: int):
    # Without torchvision, transformers 5 falls back from CLIPImageProcessor to its PIL backend
    # with a warning (even on attribute access); use the PIL class directly in that case.
    try:
        import torchvision  # noqa: F401
        from transformers import CLIPImageProcessor as cls
    except ImportError:
        from transformers import CLIPImageProcessorPil as cls
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_segmentation(out_dir: Path, cfg: dict[str, Any]) -> None:
    """A DPTForSemanticSegmentation with 2 labels (background/foreground) + its processor.

    DPT rather than Segformer: in transformers 5 Segformer's image processor needs torchvision,
    which this project does not install; DPT's PIL processor does not.
    """
    from transformers import DPTConfig, DPTForSemanticSegmentation, DPTImageProcessorPil

    labels = cfg["labels"]
    torch.manual_seed(cfg["seed"])
    model = DPTForSemanticSegmentation(
        DPTConfig(**cfg["model"], image_size=cfg["image_size"], num_labels=len(labels),
                  id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    )
    model.save_pretrained(out_dir)
    size = cfg["image_size"]
    DPTImageProcessorPil(size={"height": size, "width": size}, keep_aspect_ratio=False,
                         do_reduce_labels=False).save_pretrained(out_dir)


def build_llm(out_dir: Path, cfg: dict[str, Any]) -> None:
    """A Qwen2ForCausalLM (the production instruct model's class) + a local ChatML tokenizer."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_chat_tokenizer(cfg["tokenizer_vocab_size"])
    torch.manual_seed(cfg["seed"])
    model = Qwen2ForCausalLM(
        Qwen2Config(**cfg["model"], vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    )
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


BUILDERS: dict[str, Builder] = {
    "text_to_image": build_text_to_image,
    "inpaint": build_inpaint,
    "lora": build_lora_set,
    "ip_adapter": build_ip_adapter,
    "image_to_video": build_image_to_video,
    "segmentation": build_segmentation,
    "llm": build_llm,
    **offline_vision.BUILDERS,
}


def build(role: str, out_dir: Path, config: dict[str, Any]) -> None:
    """Build ``role`` into ``out_dir`` without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        BUILDERS[role](Path(out_dir), config)
    (Path(out_dir) / "offline_build.json").write_text(
        json.dumps({"role": role, "builder_version": BUILDER_VERSION, "config": config},
                   indent=1, sort_keys=True)
    )


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
