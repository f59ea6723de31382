"""GPU benchmark: a real-size random-weight SDXL (or FLUX.1) model, images/s with and without the worker.

Nothing is downloaded: the model is built from the published configs written out below (SDXL
base 1.0: UNet 2.6 B parameters, two CLIP text encoders, the SDXL VAE; or FLUX.1-dev: the 12 B
transformer, CLIP-L, T5-XXL, the 16-channel VAE) with random weights, in fp16 (bf16 for FLUX) on
the GPU, saved with ``save_pretrained`` to ``--model-dir`` and loaded back the way a worker loads
a production model: :class:`~gpu_consumers.model_cache.ModelCache` over a production
:class:`~gpu_consumers.models.ModelRegistry` whose text-to-image id is that folder. Random
weights give noise images, but every layer runs at its real size, so the timings are real.

Then, at ``--size`` x ``--size`` (1024) with ``--steps`` denoising steps:

1. **direct**: ``pipe(prompt, width, height, num_inference_steps, generator)`` called ``--images``
   times after a warm-up call; images/s;
2. **worker**: ``--images`` GENERATION tasks submitted with the producer and run by a
   :class:`~gpu_consumers.runtime.Worker` in burst mode (the GENERATION handler through the same
   warm ModelCache, PNG outputs to a file:// folder) on the broker at KAFKA_BOOTSTRAP_SERVERS,
   else a local one (``devstack``: needs Java and the Kafka jars); images/s from the first
   PROCESSING to the last COMPLETED, and the worker's time around the handler per task.

    python bench/gpu_real_size.py [--model sdxl|flux] [--steps 30] [--images 8] [--size 1024]
    python bench/gpu_real_size.py --smoke    # tiny configs on the CPU: checks this script only

Without a CUDA device it stops with a message saying so (``--smoke`` excepted). Disk: about
7 GB (SDXL) or 34 GB (FLUX) in ``--model-dir``; an existing folder is reused.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "a woman wearing a blue summer dress, full body shot, studio lighting"

# --------------------------------------------------------------------------- SDXL base 1.0
# From stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/, text_encoder/, text_encoder_2/,
# scheduler/ config.json.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, center_input_sample=False,
    flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), use_linear_projection=True, upcast_attention=False,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=1024,
    scaling_factor=0.13025, force_upcast=True)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
              projection_dim=768, vocab_size=49408)
CLIP_BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                  num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
                  projection_dim=1280, vocab_size=49408)
SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", prediction_type="epsilon",
                      timestep_spacing="leading", steps_offset=1, interpolation_type="linear",
                      use_karras_sigmas=False)

# --------------------------------------------------------------------------- FLUX.1-dev
# From black-forest-labs/FLUX.1-dev: transformer/, vae/, text_encoder_2/ (T5-XXL), scheduler/.
FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                        pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
FLUX_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, act_fn="silu", latent_channels=16, norm_num_groups=32, sample_size=1024,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    force_upcast=True)
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
              feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                      base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096)

# --------------------------------------------------------------------------- --smoke (CPU)
# The same structures at toy sizes (as in diffusers' own fast tests): they check this script.
SMOKE = {
    "sdxl_unet": dict(SDXL_UNET, sample_size=32, block_out_channels=(32, 64), layers_per_block=1,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                      transformer_layers_per_block=(1, 1), attention_head_dim=(2, 4),
                      cross_attention_dim=64, addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=80, norm_num_groups=8),
    "sdxl_vae": dict(SDXL_VAE, block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                     up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=64),
    "clip": dict(CLIP_L, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, projection_dim=32, vocab_size=1000),
    "flux_transformer": dict(FLUX_TRANSFORMER, in_channels=4, num_layers=1, num_single_layers=1,
                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                             pooled_projection_dim=32, axes_dims_rope=(4, 4, 8)),
    "flux_vae": dict(FLUX_VAE, block_out_channels=(16,), down_block_types=("DownEncoderBlock2D",),
                     up_block_types=("UpDecoderBlock2D",), layers_per_block=1, latent_channels=1,
                     norm_num_groups=8, sample_size=32),
    "t5": dict(T5_XXL, d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2, vocab_size=1000),
}


def require_cuda(smoke: bool) -> str:
    """``cuda``, or ``cpu`` for --smoke; exit with a clear message when no GPU is there."""
    try:
        import torch
    except ImportError:
        sys.exit("gpu_real_size.py: torch is not installed; install the project "
                 "(pip install -e .) on the GPU machine")
    if smoke:
        return "cpu"
    if not torch.cuda.is_available():
        sys.exit(
            "gpu_real_size.py needs a CUDA GPU, and torch "
            f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'}) sees none: "
            "torch.cuda.is_available() is False. Run it on a GPU machine with the NVIDIA driver, "
            "or pass --smoke to check the script on the CPU with tiny models.")
    return "cuda"


@contextmanager
def _default(device: str, dtype: Any):
    """Create modules directly on ``device`` in ``dtype`` (random init on the GPU is seconds,
    on the CPU minutes for billions of parameters)."""
    import torch

    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(saved)


def _clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    from gpu_consumers.models.vocab import write_clip_tokenizer_files

    ids = write_clip_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77), ids


def _t5_tokenizer():
    """A T5 tokenizer from a small local word-level vocabulary (ids below the model's 32128)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from gpu_consumers.models.vocab import CLIP_WORDS

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(CLIP_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def build_model(kind: str, folder: Path, device: str, dtype: Any, smoke: bool) -> dict[str, Any]:
    """Build the random-weight pipeline, save it to ``folder``; returns parameter counts."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    vocab_dir = folder.parent / f".{folder.name}-vocab"
    tokenizer, ids = _clip_tokenizer(vocab_dir)
    special = dict(bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"],
                   pad_token_id=ids["eos_token_id"])
    clip_l = SMOKE["clip"] if smoke else CLIP_L
    if smoke:
        clip_l = dict(clip_l, vocab_size=max(clip_l["vocab_size"], ids["vocab_size"]))
    with _default(device, dtype):
        if kind == "sdxl":
            from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

            clip_g = dict(SMOKE["clip"], vocab_size=clip_l["vocab_size"]) if smoke else CLIP_BIG_G
            denoiser = UNet2DConditionModel(**(SMOKE["sdxl_unet"] if smoke else SDXL_UNET))
            vae = AutoencoderKL(**(SMOKE["sdxl_vae"] if smoke else SDXL_VAE))
            text_encoder = CLIPTextModel(CLIPTextConfig(**clip_l, **special))
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_g, **special))
            pipe = StableDiffusionXLPipeline(
                vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer, unet=denoiser,
                scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER))
        else:
            from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
            from transformers import T5Config, T5EncoderModel

            denoiser = FluxTransformer2DModel(**(SMOKE["flux_transformer"] if smoke else FLUX_TRANSFORMER))
            vae = AutoencoderKL(**(SMOKE["flux_vae"] if smoke else FLUX_VAE))
            text_encoder = CLIPTextModel(CLIPTextConfig(**clip_l, **special))
            text_encoder_2 = T5EncoderModel(T5Config(**(SMOKE["t5"] if smoke else T5_XXL)))
            pipe = FluxPipeline(
                scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae,
                text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                tokenizer_2=_t5_tokenizer(), transformer=denoiser)
    counts = {name: sum(p.numel() for p in module.parameters())
              for name, module in pipe.components.items() if hasattr(module, "parameters")}
    staging = folder.parent / f".{folder.name}-staging"
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    os.replace(staging, folder)  # complete folders only
    shutil.rmtree(vocab_dir, ignore_errors=True)
    del pipe, denoiser, vae, text_encoder, text_encoder_2
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return counts


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 4) if seconds > 0 else float("inf")


def direct(pipe: Any, args: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch

    def one(seed: int) -> float:
        start = time.perf_counter()
        pipe(prompt=PROMPT, width=args.size, height=args.size, num_inference_steps=args.steps,
             generator=torch.Generator(device=device).manual_seed(seed), output_type="pil")
        _sync(device)
        return time.perf_counter() - start

    one(0)  # warm-up: kernels, allocator, cuDNN autotuning
    seconds = [one(i + 1) for i in range(args.images)]
    return {"images": args.images, "images_per_s": _rate(len(seconds), sum(seconds)),
            "median_s_per_image": round(statistics.median(seconds), 4)}


def through_worker(cache: Any, args: argparse.Namespace, device: str, stack: ExitStack,
                   workdir: Path) -> dict[str, Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from gpu_consumers.handlers.generation import DiffusersGeneration
    from gpu_consumers.inputs import InputFetcher
    from gpu_consumers.runtime import Worker
    from gpu_consumers.settings import WorkerSettings
    from gpu_consumers.storage import FileStore
    from producers.submit import TaskProducer
    from schemas.codec import EventCodec
    from schemas.enums import TaskStatus, TaskType
    from schemas.events import StatusChanged
    from schemas.kafka_settings import KafkaSettings
    from schemas.topic_admin import ensure_topics

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        from devstack.kafka import KafkaBroker

        bootstrap = stack.enter_context(KafkaBroker()).bootstrap_servers
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"gpubench{uuid.uuid4().hex[:8]}",
                          partitions=1)
    ensure_topics(kafka)
    task = {"prompt": PROMPT, "width": args.size, "height": args.size,
            "provider_config": {"num_inference_steps": args.steps}}
    with TaskProducer(kafka, source="gpu-bench") as producer:
        ids = {producer.submit(TaskType.GENERATION, {**task, "seed": i}) for i in range(args.images)}
    # inline: the warm pipeline above is handed to the worker as an object of this process.
    settings = WorkerSettings(types=[TaskType.GENERATION], group_prefix=f"{kafka.topic_prefix}-w",
                              device=device, task_timeout_s=3600, execution="inline")
    handler = DiffusersGeneration()
    worker = Worker(kafka, settings, {TaskType.GENERATION: {"diffusers": lambda: handler}},
                    FileStore(workdir / "results"), InputFetcher(), cache)
    stats = worker.run(max_tasks=args.images)
    if stats.completed != args.images:
        raise RuntimeError(f"the worker did not complete every task: {stats}")

    codec, events = EventCodec(), {t: [] for t in ids}
    consumer = Consumer({**kafka.client_config(), "group.id": f"gpubench-{uuid.uuid4().hex}"})
    parts = consumer.list_topics(kafka.topics.status, timeout=10).topics[kafka.topics.status].partitions
    consumer.assign([TopicPartition(kafka.topics.status, p, OFFSET_BEGINNING) for p in parts])
    done, deadline = 0, time.monotonic() + 120
    while done < len(ids) and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            event = codec.decode(msg.value(), expect=StatusChanged)
            if event.envelope.task_id in events:
                events[event.envelope.task_id].append(event)
                done += event.status is TaskStatus.COMPLETED
    consumer.close()
    starts, ends, overhead_ms, handler_s = [], [], [], []
    for evs in events.values():
        start = min(e.envelope.occurred_at for e in evs
                    if e.status is TaskStatus.PROCESSING and e.envelope.source == "worker")
        end = next(e for e in evs if e.status is TaskStatus.COMPLETED)
        starts.append(start)
        ends.append(end.envelope.occurred_at)
        handler_s.append(end.result.metadata.timing_ms / 1e3)
        overhead_ms.append((end.envelope.occurred_at - start).total_seconds() * 1e3
                           - end.result.metadata.timing_ms)
    span = (max(ends) - min(starts)).total_seconds()
    return {"images": args.images, "images_per_s": _rate(args.images, span),
            "median_handler_s": round(statistics.median(handler_s), 4),
            "around_handler_overhead_ms_median": round(statistics.median(overhead_ms), 2),
            "around_handler_overhead_ms_max": round(max(overhead_ms), 2),
            "broker": bootstrap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--model", choices=("sdxl", "flux"), default="sdxl")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps per image")
    parser.add_argument("--images", type=int, default=8, help="timed images per mode")
    parser.add_argument("--size", type=int, default=1024, help="width = height in pixels")
    parser.add_argument("--model-dir", type=Path,
                        help="where the random-weight model is saved (reused if complete); "
                             "default: a temporary folder, removed at the end")
    parser.add_argument("--no-worker", action="store_true", help="only the direct pipeline calls")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny configs on the CPU (64 px, 2 steps): checks the script itself")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()
    device = require_cuda(args.smoke)
    if args.smoke:
        args.size, args.steps, args.images = min(args.size, 64), min(args.steps, 2), min(args.images, 2)

    import torch

    from gpu_consumers.model_cache import ModelCache
    from gpu_consumers.models import ModelProfile, ModelRegistry, Role, production_specs

    if device == "cpu":
        torch.set_num_threads(1)  # toy models: one thread is fastest and least noisy
    dtype_name = "float32" if args.smoke else ("bfloat16" if args.model == "flux" else "float16")
    dtype = getattr(torch, dtype_name)
    report: dict[str, Any] = {"bench": "gpu_real_size", "model": args.model, "dtype": dtype_name,
                              "size": args.size, "steps": args.steps, "smoke": args.smoke,
                              "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                              "torch": torch.__version__}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-real-size-")))
        folder = args.model_dir or workdir / f"{args.model}-random"
        started = time.perf_counter()
        if not (folder / "model_index.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            counts = build_model(args.model, folder, device, dtype, args.smoke)
            report["parameters"] = counts
            report["parameters_total_b"] = round(sum(counts.values()) / 1e9, 3)
        report["build_s"] = round(time.perf_counter() - started, 1)

        spec = replace(production_specs()[Role.TEXT_TO_IMAGE], model_id=str(folder),
                       torch_dtype=dtype_name, variant=None)
        registry = ModelRegistry(ModelProfile.PRODUCTION, specs={Role.TEXT_TO_IMAGE: spec})
        cache = ModelCache(registry, device=device)
        started = time.perf_counter()
        pipe = cache.text_to_image()
        _sync(device)
        report["load_s"] = round(time.perf_counter() - started, 1)
        report["pipeline"] = type(pipe).__name__
        report["direct"] = direct(pipe, args, device)
        if not args.no_worker:
            try:
                report["worker"] = through_worker(cache, args, device, stack, workdir)
                report["worker_vs_direct"] = round(
                    report["worker"]["images_per_s"] / report["direct"]["images_per_s"], 4)
            except Exception as exc:  # e.g. no broker: keep the direct figures
                report["worker"] = {"error": f"{type(exc).__name__}: {exc}"}
        if device == "cuda":
            report["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del pipe, cache
        gc.collect()
    print(json.dumps(report))
    if not args.json:
        d, w = report["direct"], report.get("worker", {})
        print(f"{args.model} {dtype_name} {args.size}x{args.size}, {args.steps} steps on "
              f"{report['device']}: direct {d['images_per_s']:.3f} images/s "
              f"({d['median_s_per_image']:.2f} s/image)")
        if "images_per_s" in w:
            print(f"  through the worker: {w['images_per_s']:.3f} images/s "
                  f"({report['worker_vs_direct']:.1%} of direct), worker time around the handler "
                  f"{w['around_handler_overhead_ms_median']:.1f} ms median per task")
        elif w:
            print(f"  worker part skipped: {w['error']}")


if __name__ == "__main__":
    main()
