"""FeatureExtractor: the one shared CLIP encoder, and with models/ (names and weights -> what open_clip loads) the
only open_clip user; images.py opens image files, identity.py says what a model is.

A model is named by an open_clip architecture ("ViT-B-32"), an "hf-hub:org/repo" name, a path to an open_clip
model-config JSON, or a model folder (open_clip's hub layout, `local-dir:DIR`, or a transformers CLIP folder,
converted in memory by hf_convert.py). Weights come from a pretrained tag ("openai", built with the activation
the tag was trained with), a local checkpoint file, the folder itself, or nothing (random init, for tests and
speed benchmarks); weights.py resolves all of these. Image and text embeddings are L2-normalized float32.
"""
from __future__ import annotations

import os
import signal
from collections import OrderedDict
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from toolkit.encoder.accel import CausalTextTower, auto_dtype, compile_encoder, image_memory_format, pad_batch
from toolkit.config import ModelConfig
from toolkit.errors import ConfigError, InputError
from toolkit.identity import ExtractorIdentity
from toolkit.runtime import resolve_device
from toolkit.encoder.images import load_image, to_rgb
from toolkit.models.weight_files import ModelSource
from toolkit.models.weights import build as build_model, resolve as resolve_model

TEXT_CACHE_SIZE = 20_000  # prompt embeddings kept per extractor (~40 MB at 512 dims)


# ---------------------------------------------------------------- device and precision

def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """fp32 | bf16 | fp16, or auto: bf16 on CUDA and on CPUs with native bf16 (AVX-512 BF16 / AMX), else fp32."""
    if precision == "auto":
        return auto_dtype(device)
    if precision == "int8":
        raise ConfigError("precision int8 runs only through ONNX Runtime on the CPU (predict, extract, embed, serve "
                          "with engine auto or onnx); set {field} fp32, bf16 or auto here", field="precision")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ---------------------------------------------------------------- batches of image files

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


def quiet_worker(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process (a terminal's Ctrl-C reaches the whole process group).
    They hand batches over as numpy arrays (`collate_images`), pickled through the worker's queue: a torch tensor
    would be shared by passing file descriptors through multiprocessing's resource sharer, whose thread in the
    worker printed a connection-reset traceback when the main process stopped mid-handover."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
    """[(i, tensor or None, error or None)] -> ([i of the good items], (n_ok, 3, H, W) numpy array or None,
    {i: error}). numpy, not a tensor: see `quiet_worker` (a worker's batch crosses to the main process by pickle)."""
    ok = [(i, t) for i, t, err in items if err is None]
    errors = {i: err for i, _, err in items if err is not None}
    idx = [i for i, _ in ok]
    batch = torch.stack([t for _, t in ok]).numpy() if ok else None
    return idx, batch, errors


def as_is(item):
    """A DataLoader collate_fn that leaves a worker's item alone (the default one turns numpy arrays into
    tensors inside the worker; see `quiet_worker`)."""
    return item


# ---------------------------------------------------------------- the extractor

class FeatureExtractor:
    """Wraps one open_clip model: encode images and texts into L2-normalized float32 embeddings."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable,
                 identity: ExtractorIdentity, cfg: ModelConfig):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.identity, self.cfg = identity, cfg
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
        """Build from a model config section: format detected and weights found by weights.resolve (cache first,
        sizes checked before anything is allocated), built by weights.build, then cast to the precision."""
        src = resolve_model(cfg)
        device = resolve_device(cfg.device)
        model, preprocess, tokenizer = build_model(src, device, cfg.cache_dir)
        dtype = resolve_dtype(cfg.precision, device)
        if dtype != torch.float32:
            model = model.to(dtype)
        return cls(model, preprocess, tokenizer, cls._identity(model, tokenizer, src), cfg)

    @staticmethod
    def _identity(model, tokenizer, src: ModelSource) -> ExtractorIdentity:
        """What the features depend on, and the model spec that rebuilds the extractor (see identity.py)."""
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = pp.get("size", getattr(model.visual, "image_size", 224))
        size = list(size) if isinstance(size, (tuple, list)) else [int(size), int(size)]
        with torch.inference_mode():
            dim = int(model.encode_text(tokenizer(["a"]).to(next(model.parameters()).device)).shape[-1])
        from open_clip.transformer import QuickGELU

        own_file = src.checkpoint if src.tag is None else None  # a tag is recorded as the tag, not its cache file
        sha = src.sha256 if own_file else None
        return ExtractorIdentity(
            model=src.name, pretrained=src.tag or (os.path.basename(own_file) if own_file else None),
            weights_sha256=sha[:16] if sha else None, embed_dim=dim, image_size=size,
            mean=[float(x) for x in pp.get("mean", (0.48145466, 0.4578275, 0.40821073))],
            std=[float(x) for x in pp.get("std", (0.26862954, 0.26130258, 0.27577711))],
            interpolation=str(pp.get("interpolation", "bicubic")), resize_mode=str(pp.get("resize_mode", "shortest")),
            format=src.format, source=src.source, checkpoint=own_file, checkpoint_sha256=sha,
            quick_gelu=any(isinstance(m, QuickGELU) for m in model.modules()),
            model_config=src.model_cfg if src.format == "open_clip-config" else None)

    # -- properties
    @property
    def embed_dim(self) -> int:
        return self.identity.embed_dim

    def plain_bpe(self) -> Optional[str]:
        """The BPE vocabulary file when the tokenizer is CLIP's plain one (open_clip's SimpleTokenizer, no
        reduction, only the start/end special tokens), which encoder.bpe repeats without open_clip; else None."""
        from open_clip.tokenizer import SimpleTokenizer, default_bpe

        tok = self.tokenizer
        plain = type(tok) is SimpleTokenizer and tok.reduction_fn is None and len(tok.all_special_ids) == 2
        return default_bpe() if plain else None

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature, exp(logit_scale): logits = scale * cosine similarity."""
        return float(self.model.logit_scale.detach().float().exp().item())

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (Lightning moves them to each rank's device in distributed extraction)."""
        return next(self.model.parameters()).device

    # -- images
    @torch.inference_mode()
    def encode_batch(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """(n, 3, H, W) preprocessed images (a tensor, or a numpy array from `collate_images`) -> (n, D) float32,
        rows L2-normalized.

        The batch is either float (from `preprocess`) or uint8 (from `prepare`: scaled and normalized here).
        """
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
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

    def encode_prepared(self, items: Sequence[torch.Tensor]) -> np.ndarray:
        """Images already through `prepare` ((3, H, W) tensors) -> (n, D) float32, rows L2-normalized."""
        if not len(items):
            return np.zeros((0, self.embed_dim), np.float32)
        return self.encode_batch(torch.stack(list(items)))

    def encode_images(self, images: Sequence[Image.Image], batch_size: Optional[int] = None) -> np.ndarray:
        """PIL images -> (n, D) float32, rows L2-normalized."""
        bs = batch_size or self.cfg.batch_size
        out = [self.encode_batch(torch.stack([self.prepare(to_rgb(im)) for im in images[i:i + bs]]))
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
        loader = DataLoader(self.path_dataset(paths), batch_size=bs, num_workers=workers, worker_init_fn=quiet_worker,
                            collate_fn=collate_images, pin_memory=self.device.type == "cuda",
                            persistent_workers=False)
        for idx, batch, errors in loader:
            feats = self.encode_batch(batch) if batch is not None else np.zeros((0, self.embed_dim), np.float32)
            yield idx, feats, errors

    def encode_paths(self, paths: Sequence[str], batch_size: Optional[int] = None,
                     num_workers: Optional[int] = None, progress: bool = False
                     ) -> tuple[np.ndarray, dict[int, str]]:
        """Image files -> ((n, D) features with NaN rows for failures, {index: error message})."""
        from toolkit.encoder.batches import gather

        return gather(self.iter_path_batches(paths, batch_size, num_workers), len(paths), self.embed_dim, progress)

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
