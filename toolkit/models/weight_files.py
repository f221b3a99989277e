"""Weights files and the local cache, without open_clip: what a model is built from (ModelSource), what kind a checkpoint is, where the Hugging Face cache
holds a repo's file, whether the hub answers, and the one-line errors about them. Used by weights.py.
"""
from __future__ import annotations

import json
import os
import socket
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlparse

from toolkit.errors import ModelError
from toolkit.identity import file_sha256

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HUB_HOST = "huggingface.co"
BYOW = "see README 'Bring your own weights'"


@dataclass
class ModelSource:
    """What to build: where the architecture and the weights come from. Becomes the identity's model spec."""

    format: str  # open_clip | open_clip-config | hf-hub | open_clip-dir | transformers-dir
    name: str  # the identity's model name: architecture, config stem, hf-hub name, or folder name
    source: str  # what --model rebuilds it from: architecture, hf-hub name, absolute JSON or folder path
    arch: Optional[str] = None  # what open_clip.create_model takes; None for a transformers folder
    model_cfg: Optional[dict] = None  # the open_clip model config, when known before building
    tag: Optional[str] = None  # pretrained tag
    download: bool = False  # the tag's weights (or hub model) aren't cached: open_clip fetches them
    checkpoint: Optional[str] = None  # absolute path of local weights (for a tag: its cached file)
    kind: Optional[str] = None  # safetensors | pickle | torchscript
    sha256: Optional[str] = None  # full sha256 of a user-given checkpoint or a folder's weights
    quick_gelu: Optional[bool] = None  # None: as the model config says
    preprocess: dict = field(default_factory=dict)  # open_clip PreprocessCfg overrides
    folder: Optional[str] = None
    tokenizer: Optional[Callable[[], Callable]] = None  # builds the tokenizer when open_clip's default won't do

    def describe(self) -> str:
        """The detected format and where it came from, for one-line errors."""
        if self.format in ("open_clip-dir", "transformers-dir"):
            return f"{'open_clip' if self.format == 'open_clip-dir' else 'transformers CLIP'} folder '{self.folder}'"
        if self.format == "hf-hub":
            return f"hub model '{self.source}'"
        weights = f"pretrained tag '{self.tag}'" if self.tag else \
            f"{self.kind or ''} checkpoint '{self.checkpoint}'" if self.checkpoint else "random weights"
        return f"model '{self.name}' with {weights}"


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
