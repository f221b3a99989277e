"""OnnxExtractor: what Predictor, the zero-shot head and extraction use of a FeatureExtractor, run from a fast-path
entry (fast.py builds and finds entries) with numpy and onnxruntime only: no torch or open_clip import.

An entry folder holds image.onnx + image.data and text.onnx + text.data (ONNX Runtime's optimized graphs),
meta.json (identity, preprocessing, logit scale, tokenizer), bpe_merges.txt, texts.safetensors (prompt
embeddings seen so far) and, for precision int8, int8/ (the image tower with int8 matrix products).
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from toolkit.errors import InputError
from toolkit.identity import ExtractorIdentity

IMAGE, TEXT, META, VOCAB, TEXTS = "image.onnx", "text.onnx", "meta.json", "bpe_merges.txt", "texts.safetensors"
IMAGE_DATA = "image.data"  # the image graph's weights (onnx.save_optimized)
INT8 = "int8"  # subfolder: the image tower with int8 matrix products (precision int8), built on first use


class OnnxExtractor:
    """What Predictor and ZeroShotHead use of a FeatureExtractor (identity, embed_dim, logit_scale,
    encode_texts, encode_images, encode_paths, iter_path_batches), over an entry's ONNX graphs. Sessions are
    opened on first use; the text session is closed after each use, so the two towers are never both held
    (peak memory: the larger tower, not both)."""

    def __init__(self, folder: Path, cfg: Any, keep_text_tower: bool = False):
        from toolkit.encoder.preprocess import PreprocessSpec
        from toolkit.encoder.text_cache import TextEmbeddingCache

        self.folder, self.cfg = Path(folder), cfg
        self.meta = json.loads((self.folder / META).read_text())
        self.identity = ExtractorIdentity.from_dict(self.meta["identity"])
        self.int8 = getattr(cfg, "precision", None) == "int8"
        if self.int8:  # image features other than fp32's (the text tower stays fp32): stores keep them apart
            self.identity = dataclasses.replace(self.identity, quantization="int8")
        self.spec = PreprocessSpec.from_dict(self.meta["preprocess"])
        self.logit_scale = float(self.meta["logit_scale"])
        self.texts = TextEmbeddingCache(self.folder / TEXTS)
        self.min_decode_side = max(self.identity.image_size) if getattr(cfg, "draft_decode", False) else None
        self._image = self._text = None
        self._keep_text = keep_text_tower
        self._text_lock = threading.Lock()  # a server encodes label sets from several threads
        self.engine = "onnx"

    @property
    def embed_dim(self) -> int:
        return self.identity.embed_dim

    # -- texts
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Texts -> (n, D) float32, rows L2-normalized: from the prompt cache, the rest through the text graph
        (batched longest first and cut after the longest prompt, as the torch path does) and then cached."""
        if not len(texts):
            return np.zeros((0, self.embed_dim), np.float32)
        distinct = list(dict.fromkeys(texts))
        with self._text_lock:
            have = self.texts.lookup(distinct)
            missing = [t for t in distinct if t not in have]
            if missing:
                fresh = self._encode_new(missing, batch_size)
                try:
                    self.texts.add(fresh)
                except OSError:  # a read-only cache: encoded again next time
                    pass
                have.update(fresh)
        return np.stack([have[t] for t in texts]).astype(np.float32)

    def _encode_new(self, texts: list[str], batch_size: int) -> dict[str, np.ndarray]:
        from toolkit.encoder.bpe import BpeTokenizer, used_length
        from toolkit.encoder.onnx import OnnxTextEncoder

        tok = self.meta["tokenizer"]
        tokens = BpeTokenizer(self.folder / tok["vocab"], tok["context_length"])(texts)
        order = np.argsort(-(tokens != tok["pad_id"]).sum(axis=1), kind="stable")  # longest first
        session = self._text or OnnxTextEncoder(self.folder / TEXT, optimized=True)
        fresh: dict[str, np.ndarray] = {}
        for i in range(0, len(texts), batch_size):
            rows = order[i:i + batch_size]
            batch = tokens[rows]
            if tok["cut"]:
                batch = batch[:, :used_length(batch, tok["pad_id"])]
            fresh.update(zip((texts[r] for r in rows), session.encode_tokens(batch)))
        self._text = session if self._keep_text else None  # else freed before the image tower is loaded
        return fresh

    # -- images
    def _image_session(self):
        if self._image is None:
            from toolkit.encoder.onnx import OnnxImageEncoder

            self._image = OnnxImageEncoder(self.folder / (f"{INT8}/{IMAGE}" if self.int8 else IMAGE), optimized=True)
        return self._image

    def encode_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) uint8 arrays from `prepare` -> (n, D) float32, rows L2-normalized."""
        from toolkit.encoder.preprocess import normalize

        if not len(batch):
            return np.zeros((0, self.embed_dim), np.float32)
        return self._image_session().encode_batch(normalize(batch, self.spec))

    def encode_batch(self, batch: Any) -> np.ndarray:
        """(n, 3, H, W) uint8 (from `prepare`) or float32 (already normalized) -> (n, D) float32 normalized."""
        x = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        return self.encode_arrays(x) if x.dtype == np.uint8 else self._image_session().encode_batch(x)

    def encode_prepared(self, items: Sequence[np.ndarray]) -> np.ndarray:
        """Images already through `prepare` ((3, H, W) uint8 arrays) -> (n, D) float32, rows L2-normalized."""
        if not len(items):
            return np.zeros((0, self.embed_dim), np.float32)
        return self.encode_arrays(np.stack(list(items)))

    def prepare(self, image) -> np.ndarray:
        """An RGB PIL image -> (3, H, W) uint8, resized and cropped."""
        from toolkit.encoder.preprocess import to_uint8

        return to_uint8(image, self.spec)

    def encode_images(self, images: Sequence, batch_size: Optional[int] = None) -> np.ndarray:
        """PIL images -> (n, D) float32, rows L2-normalized."""
        from toolkit.encoder.images import to_rgb

        bs = batch_size or self.cfg.batch_size
        out = [self.encode_arrays(np.stack([self.prepare(to_rgb(im)) for im in images[i:i + bs]]))
               for i in range(0, len(images), bs)]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def _load(self, path: str) -> tuple[Optional[np.ndarray], Optional[str]]:
        from toolkit.encoder.images import load_image

        try:
            return self.prepare(load_image(path, self.min_decode_side)), None
        except InputError as e:
            return None, e.message
        except Exception as e:  # a corrupt file can fail inside the resize too
            return None, f"'{path}' could not be preprocessed ({e.__class__.__name__}: {e})"

    def iter_path_batches(self, paths: Sequence[str], batch_size: Optional[int] = None,
                          num_workers: Optional[int] = None) -> Iterable[tuple[list[int], np.ndarray, dict[int, str]]]:
        """Yield (indices, (n_ok, D) features, {index: error}) per batch, in order. The first batch holds one
        image (its result can be shown at once); images are decoded in threads, one batch ahead."""
        bs = batch_size or self.cfg.batch_size
        bounds = [(0, min(1, len(paths)))] + [(lo, min(lo + bs, len(paths))) for lo in range(1, len(paths), bs)]
        threads = max(1, min(4, os.cpu_count() or 1) if num_workers is None or num_workers < 0 else num_workers)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            submit = lambda lo, hi: [pool.submit(self._load, paths[i]) for i in range(lo, hi)]  # noqa: E731
            ahead = submit(*bounds[0]) if paths else []
            for n, (lo, hi) in enumerate(bounds if paths else []):
                loaded = [f.result() for f in ahead]
                ahead = submit(*bounds[n + 1]) if n + 1 < len(bounds) else []
                idx = [lo + j for j, (arr, _) in enumerate(loaded) if arr is not None]
                errors = {lo + j: err for j, (_, err) in enumerate(loaded) if err is not None}
                arrays = [arr for arr, _ in loaded if arr is not None]
                feats = self.encode_arrays(np.stack(arrays)) if arrays else np.zeros((0, self.embed_dim), np.float32)
                yield idx, feats, errors

    def encode_paths(self, paths: Sequence[str], batch_size: Optional[int] = None,
                     num_workers: Optional[int] = None, progress: bool = False
                     ) -> tuple[np.ndarray, dict[int, str]]:
        """Image files -> ((n, D) features with NaN rows for failures, {index: error message})."""
        from toolkit.encoder.batches import gather

        return gather(self.iter_path_batches(paths, batch_size, num_workers), len(paths), self.embed_dim, progress)
