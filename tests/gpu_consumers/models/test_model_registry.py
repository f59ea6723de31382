"""ModelRegistry: offline builds are cached by config hash, built once under a lock, reused."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from gpu_consumers.models import (
    LORA_ADAPTERS,
    LoraSource,
    ModelProfile,
    ModelRegistry,
    Role,
    offline,
    production_specs,
)


def test_path_for_builds_into_role_hash_folder_and_reuses_it(registry):
    path = Path(registry.path_for(Role.LLM))
    assert path.parent == registry.cache_dir
    assert path.name == registry.cache_key(Role.LLM)
    assert path.name.startswith("llm-")
    assert (path / "config.json").is_file() and (path / "offline_build.json").is_file()
    marker_mtime = (path / "offline_build.json").stat().st_mtime_ns

    # A second registry (as in a second worker process) on the same cache reuses the build.
    again = ModelRegistry(ModelProfile.OFFLINE, registry.cache_dir)
    assert again.path_for("llm") == str(path)
    assert (path / "offline_build.json").stat().st_mtime_ns == marker_mtime


def test_cache_key_follows_config(tmp_path):
    base = ModelRegistry("offline", tmp_path)
    cfg = base.offline_config(Role.TEXT_TO_IMAGE)
    cfg["seed"] = 123
    changed = ModelRegistry("offline", tmp_path, offline_configs={"text_to_image": cfg})
    assert changed.cache_key(Role.TEXT_TO_IMAGE) != base.cache_key(Role.TEXT_TO_IMAGE)
    assert changed.cache_key(Role.LLM) == base.cache_key(Role.LLM)
    # LoRA/IP-Adapter weights are tied to the UNet: a UNet change re-keys them too.
    cfg["unet"] = {**cfg["unet"], "attention_head_dim": 4}
    unet_changed = ModelRegistry("offline", tmp_path, offline_configs={"text_to_image": cfg})
    assert unet_changed.cache_key(Role.LORA) != base.cache_key(Role.LORA)
    assert unet_changed.offline_config(Role.IP_ADAPTER)["unet"]["attention_head_dim"] == 4


def test_concurrent_first_use_builds_once(tmp_path, monkeypatch):
    calls = []

    def slow_build(role, out_dir, config):
        calls.append(role)
        time.sleep(0.2)  # long enough for the other threads to pile up on the lock
        (Path(out_dir) / "offline_build.json").write_text("{}")

    monkeypatch.setattr(offline, "build", slow_build)
    results: list[str] = []
    workers = [threading.Thread(target=lambda: results.append(
        ModelRegistry("offline", tmp_path).path_for(Role.SEGMENTATION))) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert calls == ["segmentation"]
    assert len(set(results)) == 1 and len(results) == 4
    # No staging folders are left behind.
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [Path(results[0]).name]


def test_interrupted_build_is_redone(tmp_path):
    reg = ModelRegistry("offline", tmp_path)
    stale = tmp_path / reg.cache_key(Role.LORA)
    stale.mkdir()
    (stale / "half-written.safetensors").write_bytes(b"")
    path = Path(reg.path_for(Role.LORA))
    assert path == stale
    assert not (path / "half-written.safetensors").exists()
    assert sorted(p.name for p in path.glob("*.safetensors")) == sorted(
        f"{n}.safetensors" for n in LORA_ADAPTERS)


def test_builds_are_deterministic(tmp_path):
    """Same config -> byte-identical weights (seeded), so the content hash names the content."""
    cfg = offline.default_configs()["lora"]
    digests = []
    for name in ("a", "b"):
        offline.build("lora", tmp_path / name, cfg)
        data = (tmp_path / name / "style.safetensors").read_bytes()
        digests.append(hashlib.sha256(data).digest())
    assert digests[0] == digests[1]


def test_offline_sources_and_kwargs(registry):
    loras = registry.lora_sources()
    assert set(loras) == set(LORA_ADAPTERS)
    assert all(Path(s.model_id, s.weight_name).is_file() for s in loras.values())
    ip = registry.ip_adapter_source()
    assert Path(ip.model_id, ip.weight_name).is_file()
    assert (Path(ip.model_id) / ip.image_encoder_folder / "config.json").is_file()
    kwargs = registry.load_kwargs(Role.TEXT_TO_IMAGE)
    assert kwargs["local_files_only"] is True and "variant" not in kwargs
    assert registry.spec(Role.LORA).lora == loras
    assert registry.spec(Role.IP_ADAPTER).ip_adapter == ip
    spec = registry.spec(Role.SEGMENTATION)
    assert spec.model_id == registry.path_for(Role.SEGMENTATION)
    assert spec.options["background_label_ids"] == [0]


def test_production_profile_returns_configured_ids(tmp_path):
    reg = ModelRegistry("production", tmp_path)
    assert reg.path_for(Role.TEXT_TO_IMAGE) == production_specs()[Role.TEXT_TO_IMAGE].model_id
    assert reg.path_for(Role.LLM) == "Qwen/Qwen2.5-1.5B-Instruct"
    assert reg.load_kwargs(Role.TEXT_TO_IMAGE)["variant"] == "fp16"
    assert not any(tmp_path.iterdir())  # nothing is built in production

    env = {"COMPUTE_MODEL_PROFILE": "production", "COMPUTE_MODEL_CACHE_DIR": str(tmp_path),
           "COMPUTE_MODEL_LLM": "/models/my-llm",
           "COMPUTE_LORA_STYLE": "org/style-lora:style.safetensors"}
    reg = ModelRegistry.from_env(env)
    assert reg.profile is ModelProfile.PRODUCTION
    assert reg.path_for(Role.LLM) == "/models/my-llm"
    assert reg.lora_sources() == {"style": LoraSource("org/style-lora", "style.safetensors")}
    assert reg.ip_adapter_source() == production_specs()[Role.IP_ADAPTER].ip_adapter

    env["COMPUTE_IP_ADAPTER"] = "/models/ip:sd15:ip-adapter_sd15.safetensors"
    ip = ModelRegistry.from_env(env).ip_adapter_source()
    assert (ip.model_id, ip.subfolder, ip.weight_name) == (
        "/models/ip", "sd15", "ip-adapter_sd15.safetensors")
    # The offline profile ignores production ids.
    offline_env = {**env, "COMPUTE_MODEL_PROFILE": "offline"}
    assert ModelRegistry.from_env(offline_env).profile is ModelProfile.OFFLINE


def test_unknown_role_and_profile_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        ModelRegistry("staging", tmp_path)
    with pytest.raises(ValueError):
        ModelRegistry("offline", tmp_path).path_for("upscaler")


def test_offline_build_record(registry):
    record = json.loads((Path(registry.path_for(Role.LLM)) / "offline_build.json").read_text())
    assert record["role"] == "llm" and record["builder_version"] == offline.BUILDER_VERSION


_BUILD_IN_SUBPROCESS = """
import sys, time
from pathlib import Path
from gpu_consumers.models import offline
from gpu_consumers.models.model_registry import ModelRegistry

def stub_build(role, out_dir, config):  # records who built, slowly, instead of building
    with open(sys.argv[2], "a") as log:
        log.write(role + "\\n")
    time.sleep(0.5)
    (Path(out_dir) / "offline_build.json").write_text("{}")

offline.build = stub_build
print(ModelRegistry("offline", sys.argv[1]).path_for("image_to_video"))
"""


def test_two_worker_processes_build_once(tmp_path):
    import subprocess
    import sys

    log = tmp_path / "builds.log"
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_IN_SUBPROCESS, str(cache), str(log)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    paths = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert paths[0] == paths[1] and Path(paths[0]).name.startswith("image_to_video-")
    assert log.read_text().splitlines() == ["image_to_video"]
