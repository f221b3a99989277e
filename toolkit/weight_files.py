"""Weights files and the local cache, without open_clip: what kind a checkpoint is, where the Hugging Face cache
holds a repo's file, whether the hub answers, and the one-line errors about them. Used by weights.py.
"""
from __future__ import annotations

import json
import os
import socket
import zipfile
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from .errors import ModelError
from .identity import file_sha256

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HUB_HOST = "huggingface.co"
BYOW = "see README 'Bring your own weights'"


def checkpoint_kind(path: str | Path) -> str:
    """safetensors | torchscript (a zip with code/ and constants.pkl) | pickle (torch.save, zip or legacy)."""
    if str(path).endswith(".safetensors"):
        return "safetensors"
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist()):
                    return "torchscript"
    except (OSError, zipfile.BadZipFile):
        pass
    return "pickle"


def torchscript_refusal(path: str, sha: str) -> ModelError:
    return ModelError(f"'{path}' is a TorchScript archive (sha256 {sha}) that is not an official OpenAI CLIP release; "
                      f"loading it would run code from the file: convert it to .safetensors on a trusted machine "
                      f"({BYOW}) and pass that file")


def from_cache(repo: str, filename: str, cache_dir: Optional[str]) -> Optional[str]:
    """The cached file of a hub repo (the main revision), or None. No network."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return path if isinstance(path, str) else None


def hub_reachable(host: str = HUB_HOST, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `host`:443 opens within `timeout` seconds (honours HF_HUB_OFFLINE)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def offline_error(what: str) -> ModelError:
    return ModelError(
        f"weights for {what} are not in the local cache and {HUB_HOST} can't be reached; "
        "download them on a connected machine, or pass a local checkpoint with --pretrained PATH.safetensors "
        "(or use the offline demo: --config configs/demo.yaml)"
    )


def read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{what} '{path}' is not valid JSON ({e}); fix the file") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{what} '{path}' is not a JSON object; fix the file")
    return doc


def cached_tag_file(tcfg: dict, cache_dir: Optional[str]) -> Optional[str]:
    """The local file of a tag's weights when cached: the hub file open_clip would fetch (safetensors first), or
    OpenAI's archive in the URL cache when its sha256 is the one in the URL."""
    if tcfg.get("file"):
        return tcfg["file"] if Path(tcfg["file"]).is_file() else None
    if tcfg.get("hf_hub"):
        repo, filename = os.path.split(tcfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        names = ["open_clip_model.safetensors"] if filename == "open_clip_pytorch_model.bin" else \
            [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
        for name in names + [filename]:
            path = from_cache(repo, name, cache_dir)
            if path:
                return path
    url = tcfg.get("url") or ""
    path = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)
    if url and path.is_file() and ("openaipublic" not in url or file_sha256(path) == url.rstrip("/").split("/")[-2]):
        return str(path)
    return None
