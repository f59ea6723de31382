"""LoRA files: the deployment's adapters and the references tasks name.

A GENERATION task weights the slots of ``LORA_ADAPTERS`` (the deployment's own adapters, from
``ModelRegistry.lora_sources``) and may name LoRA references of its own, ``[hf:]name[:weight]``,
which :func:`resolve_lora_ref` resolves under the LoRA root or, in production, to an allowed hub
repo. References are untrusted input: only ``.safetensors`` files inside the root (symlinks
resolved) or allowed repos are ever loaded.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

# Names of the LoRA slots a GENERATION task can weight (the task's ``lora_weights`` keys).
LORA_ADAPTERS: tuple[str, ...] = ("subject", "product", "style", "product2")


@dataclass(frozen=True)
class LoraSource:
    """One LoRA file: ``pipe.load_lora_weights(model_id, weight_name=..., adapter_name=name)``.

    ``safetensors_only``: load with ``use_safetensors=True``, so diffusers never falls back to a
    pickled file (set for every reference a task names; the deployment's own adapters are
    trusted as configured)."""

    model_id: str
    weight_name: str | None = None
    safetensors_only: bool = False


@dataclass(frozen=True)
class ResolvedLora:
    """A task's LoRA reference, resolved by :func:`resolve_lora_ref`.

    ``adapter_name`` is derived from what the reference resolved to (the file, its size and
    modification time; or the hub repo and file), so two references are two adapters, the same
    one is loaded once, and a file replaced in place loads as a new adapter."""

    reference: str
    adapter_name: str
    source: LoraSource


class LoraRefError(ValueError):
    """A LoRA reference that is malformed, unknown or refused (the message names it)."""


# A reference: ``[hf:]name[:weight.safetensors]``. ``name`` is a relative path of plain parts
# (letters, digits, ``._-``; no part starts with a dot, so no ``..``, no hidden files, no
# absolute paths, no ``~``, no backslashes); ``weight`` a plain ``.safetensors`` file name.
_REF_PART = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}"
LORA_REF = re.compile(
    rf"(?P<hub>hf:)?(?P<name>{_REF_PART}(?:/{_REF_PART}){{0,7}})(?::(?P<weight>{_REF_PART}\.safetensors))?")
MAX_LORA_REF_CHARS = 300
# The file a folder's LoRA is read from when the reference names none (diffusers' own name);
# ``ModelRegistry.build_offline_lora`` writes it.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def resolve_lora_ref(reference: str, lora_root: Path,
                     hub_repos: tuple[str, ...] | None) -> ResolvedLora:
    """A task's LoRA reference (untrusted) as a file to load; LoraRefError names it otherwise.
    ``hub_repos``: the patterns of allowed hub repos (production), None where hub references
    are refused (the offline profile).

    ``[hf:]name[:weight.safetensors]`` resolves, in this order:

    1. without ``hf:``, to ``<lora_root>/<name>``: a folder (its ``weight``, else
       ``pytorch_lora_weights.safetensors``, else its only ``.safetensors`` file) or a
       ``.safetensors`` file. The file must lie inside the root once symlinks are resolved;
    2. in the production profile, to the hub repo ``name`` (``org/repo``) when it matches a
       pattern of ``hub_repos`` (``weight``, or the repo's ``.safetensors`` file).

    Only ``.safetensors`` weights are ever loaded (never a pickle). Anything else, and every
    reference in the offline profile that is not under the root, is refused.
    """
    match = (LORA_REF.fullmatch(reference)
             if isinstance(reference, str) and len(reference) <= MAX_LORA_REF_CHARS else None)
    if match is None:
        raise LoraRefError(
            f"LoRA reference {reference!r} is malformed: expected a relative name such as "
            "'anna', 'loras/anna:v2.safetensors' or 'hf:org/repo' (absolute paths, '..', '~', "
            "hidden parts and backslashes are refused)")
    name, weight = match["name"], match["weight"]
    if not match["hub"]:
        found = _local_lora(reference, name, weight, lora_root)
        if found is not None:
            return found
    repo_like = name.count("/") == 1
    if (hub_repos is not None and repo_like
            and any(fnmatchcase(name, pattern) for pattern in hub_repos)):
        digest = _digest("hub", name, weight or "")
        return ResolvedLora(reference, f"ref_{digest}", LoraSource(name, weight, safetensors_only=True))
    where = "" if match["hub"] else "no LoRA of that name under the LoRA root, and "
    why = ("hub references need the production profile" if hub_repos is None
           else "no allowed hub repo (COMPUTE_LORA_ALLOWED_REPOS) matches it")
    raise LoraRefError(f"unknown LoRA reference {reference!r}: {where}{why}")


def _local_lora(reference: str, name: str, weight: str | None, lora_root: Path) -> ResolvedLora | None:
    path = lora_root / name
    if path.is_dir():
        if weight is None:
            files = sorted(p.name for p in path.glob("*.safetensors")
                           if p.is_file() and not p.name.startswith("."))
            if LORA_WEIGHT_NAME in files:
                files = [LORA_WEIGHT_NAME]
            if not files:
                raise LoraRefError(f"LoRA reference {reference!r}: its folder holds no "
                                   ".safetensors file (only .safetensors weights are loaded)")
            if len(files) > 1:
                raise LoraRefError(f"LoRA reference {reference!r}: its folder holds several "
                                   f".safetensors files; name one, e.g. '{reference}:{files[0]}'")
            weight = files[0]
        path = path / weight
        if not path.is_file():
            raise LoraRefError(f"LoRA reference {reference!r}: its folder has no {weight}")
    elif not path.is_file() or weight is not None:
        return None
    elif path.suffix != ".safetensors":
        raise LoraRefError(f"LoRA reference {reference!r}: only .safetensors weights are loaded")
    real = path.resolve()
    if not real.is_relative_to(lora_root.resolve()):
        raise LoraRefError(f"LoRA reference {reference!r} resolves outside the LoRA root")
    stat = real.stat()
    digest = _digest("local", str(real), str(stat.st_size), str(stat.st_mtime_ns))
    return ResolvedLora(reference, f"ref_{digest}",
                        LoraSource(str(real.parent), real.name, safetensors_only=True))


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
