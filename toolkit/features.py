"""FeatureExtractor: the one shared CLIP encoder. The ONLY toolkit module that imports open_clip.

A model is named by an open_clip architecture ("ViT-B-32"), an "hf-hub:org/repo" name, or a path to an
open_clip model-config JSON. Weights come from a pretrained tag ("openai"), a local checkpoint file, or
nothing (random init, for tests and speed benchmarks). Image and text embeddings are L2-normalized float32.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import socket
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from .accel import CausalTextTower, auto_dtype, compile_encoder, draft_for, image_memory_format, pad_batch
from .config import ModelConfig
from .errors import InputError, ModelError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
HUB_HOST = "huggingface.co"
TEXT_CACHE_SIZE = 20_000  # prompt embeddings kept per extractor (~40 MB at 512 dims)


@dataclass(frozen=True)
class ExtractorIdentity:
    """What makes two extractors' features comparable. Heads and feature stores carry this."""

    model: str  # architecture name (a config JSON's stem), or the hf-hub name
    pretrained: Optional[str]  # tag, checkpoint file name, or None (random init)
    weights_sha256: Optional[str]  # first 16 hex digits of a local checkpoint's sha256; None for tags
    embed_dim: int
    image_size: list[int]
    mean: list[float]
    std: list[float]
    interpolation: str
    resize_mode: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExtractorIdentity":
        return cls(**d)

    def mismatch(self, other: "ExtractorIdentity") -> Optional[str]:
        """A human-readable reason why features of `other` can't be used where ours are, or None."""
        for key in ("model", "pretrained", "weights_sha256", "embed_dim"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                return f"{key} differs ({theirs!r} vs {mine!r})"
        return None

    @property
    def label(self) -> str:
        return f"{self.model} / {self.pretrained or 'random-init'}"


# ---------------------------------------------------------------- resolving names -> (arch, checkpoint)

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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but CUDA is not available; use --device cpu or --device auto")
    return torch.device(device)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """fp32 | bf16 | fp16, or auto: bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16 / AMX), else fp32."""
    if precision == "auto":
        return auto_dtype(device)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ---------------------------------------------------------------- image loading

def load_image(path: str | Path, min_side: Optional[int] = None) -> Image.Image:
    """Open an image file as RGB, honouring EXIF orientation; InputError names the file on failure.

    min_side: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as long as its shorter side stays >= min_side
    (PIL's `draft`); the model's preprocessing then yields a tensor of the same size, 2-4x sooner.
    """
    try:
        with Image.open(path) as im:
            draft_for(im, min_side)
            im.load()
            ImageOps.exif_transpose(im, in_place=True)  # no full-size copy when there is nothing to rotate
            return _rgb(im)
    except FileNotFoundError:
        raise InputError(f"image '{path}' not found; check the path") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"'{path}' is not a readable image ({e.__class__.__name__}: {e})") from None


def _rgb(im: Image.Image) -> Image.Image:
    """The image in RGB; itself when it already is (convert() would copy it)."""
    return im if im.mode == "RGB" else im.convert("RGB")


class _PathDataset(Dataset):
    """Loads and preprocesses images by path; a failure becomes (None, message) instead of an exception."""

    def __init__(self, paths: Sequence[str], preprocess: Callable, min_side: Optional[int] = None):
        self.paths, self.preprocess, self.min_side = list(paths), preprocess, min_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(load_image(self.paths[i], self.min_side)), None
        except InputError as e:
            return i, None, e.message
        except Exception as e:  # a corrupt file can fail inside the transform too
            return i, None, f"'{self.paths[i]}' could not be preprocessed ({e.__class__.__name__}: {e})"


class UInt8Preprocess:
    """open_clip's preprocessing split at its ToTensor step: the PIL steps (resize, crop, RGB) per image, ending in a
    (3, H, W) uint8 tensor; the scaling to [0, 1] and Normalize run once per batch, in `normalize`.

    Same values as the whole transform (the same float ops, batched), a quarter of the bytes per image between
    DataLoader workers and the model, and no per-image float passes. `split` returns None for transforms of
    another shape, and the extractor then runs the transform as it is.
    """

    def __init__(self, pil_steps: Sequence[Callable], mean: Sequence[float], std: Sequence[float]):
        self.pil_steps = list(pil_steps)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    @classmethod
    def split(cls, preprocess: Callable) -> Optional["UInt8Preprocess"]:
        from torchvision.transforms import Normalize, ToTensor

        steps = list(getattr(preprocess, "transforms", None) or [])
        if len(steps) < 2 or not isinstance(steps[-2], ToTensor) or not isinstance(steps[-1], Normalize) \
                or steps[-1].inplace:
            return None
        return cls(steps[:-2], steps[-1].mean, steps[-1].std)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        for step in self.pil_steps:
            img = step(img)
        arr = np.array(img, dtype=np.uint8, copy=True)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an RGB image after preprocessing, got shape {arr.shape}")
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) uint8 -> float32, exactly as ToTensor then Normalize would give."""
        x = batch.float().div_(255)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))


def collate_images(items):
    """[(i, tensor or None, error or None)] -> ([i of the good items], (n_ok, 3, H, W) or None, {i: error})."""
    ok = [(i, t) for i, t, err in items if err is None]
    errors = {i: err for i, _, err in items if err is not None}
    idx = [i for i, _ in ok]
    batch = torch.stack([t for _, t in ok]) if ok else None
    return idx, batch, errors


# ---------------------------------------------------------------- the extractor

class FeatureExtractor:
    """Wraps one open_clip model: encode images and texts into L2-normalized float32 embeddings."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable,
                 identity: ExtractorIdentity, cfg: ModelConfig):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.identity, self.cfg = identity, cfg
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()  # LRU, see encode_texts
        self._uint8 = UInt8Preprocess.split(preprocess)  # None: run `preprocess` whole
        self.prepare: Callable[[Image.Image], torch.Tensor] = self._uint8 or preprocess
        self._memory_format = image_memory_format(self.dtype)
        self._text_tower = CausalTextTower.find(model)  # None: encode full-length tokens (not causal, or HF)
        self._compiled = bool(getattr(cfg, "compile", False))
        self._encode_image = compile_encoder(model.encode_image, model.visual) if self._compiled else model.encode_image
        self._compiled_batch: Optional[int] = None  # the one batch size a compiled encoder runs at
        # JPEGs decode at reduced size when the shorter side stays >= the model's input size (PIL draft)
        self.min_decode_side = max(identity.image_size) if getattr(cfg, "draft_decode", False) else None

    # -- construction
    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "FeatureExtractor":
        pretrained = None if cfg.pretrained in (None, "", "none", "None") else cfg.pretrained
        arch = _resolve_arch(cfg.name)
        weights = _check_weights_available(arch, pretrained, cfg.cache_dir)
        device = resolve_device(cfg.device)
        try:
            open_clip = _open_clip()
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=None if arch.startswith("hf-hub:") else weights,
                device=device, cache_dir=cfg.cache_dir, weights_only=True)
            tokenizer = open_clip.get_tokenizer(arch, cache_dir=cfg.cache_dir)
        except Exception as e:  # open_clip raises RuntimeError/KeyError/ValueError with long messages
            msg = str(e).splitlines()[0][:300] if str(e) else e.__class__.__name__
            raise ModelError(f"could not load model '{cfg.name}' with pretrained '{pretrained}': {msg}") from None
        model.eval().requires_grad_(False)
        dtype = resolve_dtype(cfg.precision, device)
        if dtype != torch.float32:
            model = model.to(dtype)
        return cls(model, preprocess, tokenizer, cls._identity(model, tokenizer, arch, weights, pretrained), cfg)

    @staticmethod
    def _identity(model, tokenizer, arch: str, weights: Optional[str], pretrained: Optional[str]) -> ExtractorIdentity:
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = pp.get("size", getattr(model.visual, "image_size", 224))
        size = list(size) if isinstance(size, (tuple, list)) else [int(size), int(size)]
        is_file = weights is not None and os.path.isfile(weights)
        with torch.inference_mode():
            dim = int(model.encode_text(tokenizer(["a"]).to(next(model.parameters()).device)).shape[-1])
        return ExtractorIdentity(
            model=arch, pretrained=os.path.basename(weights) if is_file else pretrained,
            weights_sha256=_sha256_prefix(weights) if is_file else None, embed_dim=dim, image_size=size,
            mean=[float(x) for x in pp.get("mean", (0.48145466, 0.4578275, 0.40821073))],
            std=[float(x) for x in pp.get("std", (0.26862954, 0.26130258, 0.27577711))],
            interpolation=str(pp.get("interpolation", "bicubic")), resize_mode=str(pp.get("resize_mode", "shortest")))

    # -- properties
    @property
    def embed_dim(self) -> int:
        return self.identity.embed_dim

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature, exp(logit_scale): logits = scale * cosine similarity."""
        return float(self.model.logit_scale.detach().float().exp().item())

    # -- images
    @torch.inference_mode()
    def encode_batch(self, batch: torch.Tensor) -> np.ndarray:
        """(n, 3, H, W) preprocessed images -> (n, D) float32, rows L2-normalized.

        The batch is either float (from `preprocess`) or uint8 (from `prepare`: scaled and normalized here).
        """
        if batch.dtype == torch.uint8:
            if self._uint8 is None:
                raise ValueError("uint8 batches need a preprocess that ends in ToTensor + Normalize")
            batch = self._uint8.normalize(batch.to(self.device))
        if self._compiled:  # one static batch size, pad the rest
            size = self._compiled_batch = self._compiled_batch or max(len(batch), self.cfg.batch_size)
            parts = [self._run_image(pad_batch(batch[i:i + size], size))[:len(batch[i:i + size])]
                     for i in range(0, len(batch), size)]
            feats = torch.cat(parts)
        else:
            feats = self._run_image(batch)
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()

    def _run_image(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=self._memory_format)
        return self._encode_image(x)

    def encode_images(self, images: Sequence[Image.Image], batch_size: Optional[int] = None) -> np.ndarray:
        """PIL images -> (n, D) float32, rows L2-normalized."""
        bs = batch_size or self.cfg.batch_size
        out = [self.encode_batch(torch.stack([self.prepare(_rgb(im)) for im in images[i:i + bs]]))
               for i in range(0, len(images), bs)]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def path_dataset(self, paths: Sequence[str]) -> Dataset:
        """A Dataset whose item i is (i, (3, H, W) preprocessed tensor or None, error message or None).

        Tensors are uint8 when the preprocessing splits (see UInt8Preprocess). Batch items with `collate_images`;
        used by iter_path_batches and by distributed extraction.
        """
        return _PathDataset(paths, self.prepare, self.min_decode_side)

    def iter_path_batches(self, paths: Sequence[str], batch_size: Optional[int] = None,
                          num_workers: Optional[int] = None) -> Iterable[tuple[list[int], np.ndarray, dict[int, str]]]:
        """Yield (indices, (n_ok, D) features, {index: error}) per batch, decoding in worker processes."""
        bs = batch_size or self.cfg.batch_size
        workers = self.cfg.num_workers if num_workers is None else num_workers
        if workers < 0:  # auto: worker processes only pay off when there are many images to decode
            workers = 0 if len(paths) < 4 * bs else min(4, os.cpu_count() or 1)
        loader = DataLoader(self.path_dataset(paths), batch_size=bs, num_workers=workers,
                            collate_fn=collate_images, pin_memory=self.device.type == "cuda",
                            persistent_workers=False)
        for idx, batch, errors in loader:
            feats = self.encode_batch(batch) if batch is not None else np.zeros((0, self.embed_dim), np.float32)
            yield idx, feats, errors

    def encode_paths(self, paths: Sequence[str], batch_size: Optional[int] = None,
                     num_workers: Optional[int] = None, progress: bool = False
                     ) -> tuple[np.ndarray, dict[int, str]]:
        """Image files -> ((n, D) features with NaN rows for failures, {index: error message})."""
        feats = np.full((len(paths), self.embed_dim), np.nan, np.float32)
        errors: dict[int, str] = {}
        from tqdm import tqdm

        with tqdm(total=len(paths), unit="img", desc="encoding", disable=not progress, leave=False) as bar:
            for idx, f, errs in self.iter_path_batches(paths, batch_size, num_workers):
                feats[idx] = f
                errors.update(errs)
                bar.update(len(idx) + len(errs))
        return feats, errors

    # -- texts
    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Texts -> (n, D) float32, rows L2-normalized. Each distinct text is encoded once per extractor while it
        stays among the TEXT_CACHE_SIZE most recently used (a long-running server sees ever new label sets).

        With a causal text tower, texts are batched by token length and each batch runs only up to its longest
        prompt instead of the full context (see accel.CausalTextTower): same embeddings, several times sooner.
        """
        cache = self._text_cache
        distinct = list(dict.fromkeys(texts))
        missing = [t for t in distinct if t not in cache]
        fresh: dict[str, np.ndarray] = {}
        if missing:
            tokens = self.tokenizer(missing)
            pad = self._text_tower.pad_id if self._text_tower is not None else 0
            order = np.argsort(-(tokens != pad).sum(dim=1).numpy(), kind="stable")  # longest first
            for i in range(0, len(missing), batch_size):
                rows = order[i:i + batch_size]
                emb = self._encode_tokens(tokens[torch.as_tensor(rows)].to(self.device))
                fresh.update(zip((missing[r] for r in rows), emb))
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        out = np.stack([fresh[t] if t in fresh else cache[t] for t in texts]).astype(np.float32)
        for t in distinct:  # this call's texts become the most recent, in their order
            if t in fresh:
                cache[t] = fresh[t]
            cache.move_to_end(t)
        while len(cache) > TEXT_CACHE_SIZE:
            cache.popitem(last=False)
        return out

    def _encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """(n, context_length) token ids -> (n, D) float32, rows L2-normalized."""
        if self._text_tower is not None:
            feats = self._text_tower.encode(tokens)
        else:
            feats = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


def load_extractor(model: str = "ViT-B-32", pretrained: Optional[str] = "openai", **kwargs: Any) -> FeatureExtractor:
    """Convenience: FeatureExtractor.from_config(ModelConfig(name=model, pretrained=pretrained, **kwargs))."""
    return FeatureExtractor.from_config(ModelConfig(name=model, pretrained=pretrained, **kwargs))
