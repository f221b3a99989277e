"""Model names and weights: architecture names, model-config JSONs, hf-hub names, pretrained tags and local
checkpoints resolved to what open_clip loads, failing fast (one line) when the weights can't be had offline.

Owned by features.py: together they are the only toolkit modules that import open_clip.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from .errors import ModelError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HUB_HOST = "huggingface.co"


def _open_clip():
    """open_clip, imported on first use: it pulls in transformers (seconds), which `ExtractorIdentity` users skip."""
    import open_clip

    return open_clip


def list_models() -> list[str]:
    return list(_open_clip().list_models())


def list_pretrained() -> list[tuple[str, str]]:
    """(architecture, tag) pairs that open_clip knows."""
    return [tuple(p) for p in _open_clip().list_pretrained()]


def openai_imagenet_templates() -> list[str]:
    """OpenAI's 80 ImageNet prompt templates, as open_clip ships them, with '{}' for the label."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") if callable(t) else str(t) for t in OPENAI_IMAGENET_TEMPLATES]


def _resolve_arch(name: str) -> str:
    """Register a model-config JSON, or check an architecture name; return the open_clip model name."""
    open_clip = _open_clip()
    if name.startswith("hf-hub:"):
        if not name[len("hf-hub:"):]:
            raise ModelError("empty hf-hub name 'hf-hub:'; use the form hf-hub:org/repo")
        return name
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise ModelError(f"model config '{name}' not found; pass an existing open_clip model-config JSON")
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"model config '{name}' is not valid JSON ({e}); fix the file") from None
        if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
            raise ModelError(f"model config '{name}' lacks vision_cfg/text_cfg; see open_clip's model_configs/*.json")
        open_clip.add_model_config(path)
        return path.stem
    if name not in open_clip.list_models():
        guesses = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(g) for g in guesses)}? " if guesses else ""
        raise ModelError(f"unknown model '{name}'; {hint}see `clipkit models`, or pass a model-config .json path")
    return name


def _hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `host`:443 opens within `timeout` seconds (honours HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _tag_is_cached(cfg: dict[str, Any], cache_dir: Optional[str]) -> bool:
    """Whether open_clip would find the weights of a pretrained tag without downloading."""
    if cfg.get("file"):
        return Path(cfg["file"]).is_file()
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"].rstrip("/")) if not cfg["hf_hub"].endswith("/") \
            else (cfg["hf_hub"].rstrip("/"), "open_clip_pytorch_model.bin")
        candidates = [filename, filename.replace(".bin", ".safetensors"), "open_clip_model.safetensors"]
        return any(isinstance(try_to_load_from_cache(repo, f, cache_dir=cache_dir), str) for f in candidates)
    if cfg.get("url"):
        root = cache_dir or os.path.expanduser("~/.cache/clip")
        return (Path(root) / os.path.basename(urlparse(cfg["url"]).path)).is_file()
    return False


def _offline_error(what: str) -> ModelError:
    return ModelError(
        f"weights for {what} are not in the local cache and {HUB_HOST} can't be reached; "
        "download them on a connected machine, or pass a local checkpoint with --pretrained PATH.safetensors "
        "(or use the offline demo: --config configs/demo.yaml)"
    )


def _check_weights_available(arch: str, pretrained: Optional[str], cache_dir: Optional[str]) -> Optional[str]:
    """Validate `pretrained` for `arch`; return a local checkpoint path, a tag, or None. Fails fast offline."""
    if arch.startswith("hf-hub:"):
        repo = arch[len("hf-hub:"):]
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(repo, "open_clip_config.json", cache_dir=cache_dir), str) \
                and not _hub_reachable():
            raise _offline_error(f"'{arch}'")
        return None
    if pretrained is None:
        return None
    open_clip = _open_clip()
    if pretrained.endswith(CHECKPOINT_SUFFIXES) or os.sep in pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise ModelError(f"checkpoint '{pretrained}' not found; pass an existing {'/'.join(CHECKPOINT_SUFFIXES)} file")
        if not pretrained.endswith(CHECKPOINT_SUFFIXES):
            raise ModelError(f"checkpoint '{pretrained}' has an unknown suffix; use one of {', '.join(CHECKPOINT_SUFFIXES)}")
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        hint = f"known tags for {arch}: {', '.join(tags)}" if tags else f"{arch} has no pretrained tags"
        raise ModelError(f"unknown pretrained tag '{pretrained}' for model '{arch}'; {hint}; "
                         "or pass a local checkpoint file")
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not _tag_is_cached(cfg, cache_dir):
        host = urlparse(cfg["url"]).hostname if cfg.get("url") and not cfg.get("hf_hub") else HUB_HOST
        if not _hub_reachable(host or HUB_HOST):
            raise _offline_error(f"model '{arch}' with pretrained tag '{pretrained}'")
    return pretrained


def _sha256_prefix(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
