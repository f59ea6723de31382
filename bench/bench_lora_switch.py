"""Benchmark: LoRA switch time on a warm pipeline, adapters already loaded (target <= 50 ms).

A switch is what a GENERATION task pays when its LoRA weights differ from the previous task's:
``ModelCache.apply_loras`` -> ``set_adapters(names, weights)`` (and ``enable_lora`` after a task
without LoRA). Loading an adapter the first time is a separate, one-off cost, reported too. The
switches cycle through weight sets a real workload mixes: one adapter, several, and none (which
turns LoRA off, ``disable_lora``).

    .venv/bin/python bench/bench_lora_switch.py [--switches 50] [--profile offline] [--json]

The offline profile (default) builds the tiny models into a temporary folder; on a GPU machine
``--profile production --device cuda`` with COMPUTE_LORA_<NAME> set measures the real models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# One task's weights per line: what consecutive GENERATION tasks could ask for.
WEIGHT_SETS: list[dict[str, float | None]] = [
    {"subject": 0.8, "product": 0.9},
    {"style": 1.0},
    {"subject": 0.8, "product": 0.9, "style": 0.4, "product2": 0.6},
    {},  # no LoRA: disable_lora
    {"product": 0.5, "product2": 0.5},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=50)
    parser.add_argument("--profile", default="offline", choices=("offline", "production"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from gpu_consumers.model_cache import ModelCache
    from gpu_consumers.models import LORA_ADAPTERS, ModelProfile, ModelRegistry

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as folder:
        if args.profile == "offline":
            registry = ModelRegistry(ModelProfile.OFFLINE, folder)
        else:
            registry = ModelRegistry.from_env({**os.environ, "COMPUTE_MODEL_PROFILE": "production"})
        cache = ModelCache(registry, args.device)

        started = time.perf_counter()
        pipe = cache.text_to_image()
        load_pipeline_s = time.perf_counter() - started
        started = time.perf_counter()
        cache.apply_loras(pipe, {name: 1.0 for name in LORA_ADAPTERS})  # load every adapter once
        load_adapters_s = time.perf_counter() - started

        switches_ms = []
        for i in range(args.switches):
            weights = WEIGHT_SETS[i % len(WEIGHT_SETS)]
            started = time.perf_counter()
            cache.apply_loras(pipe, weights)
            switches_ms.append((time.perf_counter() - started) * 1e3)

    report = {
        "profile": args.profile,
        "device": args.device,
        "switches": len(switches_ms),
        "switch_median_ms": round(statistics.median(switches_ms), 3),
        "switch_p90_ms": round(sorted(switches_ms)[int(0.9 * (len(switches_ms) - 1))], 3),
        "switch_max_ms": round(max(switches_ms), 3),
        "target_ms": 50,
        "load_pipeline_s": round(load_pipeline_s, 3),
        "load_4_adapters_s": round(load_adapters_s, 3),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"LoRA switch, adapters cached ({report['switches']} switches, {args.profile}, "
          f"{args.device}): median {report['switch_median_ms']:.2f} ms, "
          f"p90 {report['switch_p90_ms']:.2f} ms, max {report['switch_max_ms']:.2f} ms "
          f"(target <= 50 ms)")
    print(f"one-off: pipeline load {report['load_pipeline_s']:.2f} s (offline: includes building it), "
          f"loading 4 adapters {report['load_4_adapters_s']:.2f} s")


if __name__ == "__main__":
    main()
