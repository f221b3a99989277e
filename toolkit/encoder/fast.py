"""The fast path of `clipkit predict`: ONNX Runtime on the CPU, no torch or open_clip import.

A cold `clipkit predict` used to spend 5-9 s importing torch and open_clip for a few milliseconds of model
work. Here the model's image and text towers are exported to ONNX once, the first time a model is used
(`prepare`, which needs torch that one time and says so on stderr, a progress line per tower; that run
then answers through the new graphs, filling the prompt cache), into clipkit's cache:

    <cache_root>/fast/<identity hash>/   image.onnx + image.data, text.onnx + text.data (the graphs as ONNX
                                         Runtime optimized them, weights beside them: a run loads them without
                                         optimizing again), meta.json (identity, preprocessing, logit scale,
                                         tokenizer), bpe_merges.txt (CLIP's vocabulary), texts.safetensors (prompt
                                         embeddings seen so far, text_cache.py)
    <cache_root>/fast/index/<config hash>.json   the model config (name, weights, activation, cache folder)
                                         -> that folder, with the size and mtime of every file it was built from

A later run hashes its model config, finds the index entry, checks those files' size and mtime (a changed or
replaced checkpoint or model config rebuilds the entry: the same stderr line again), and runs the graphs with
numpy preprocessing (preprocess.py) and a torch-free tokenizer (bpe.py). Every graph, the preprocessing and
the tokenizer are checked against the torch model when the entry is built; a model that fails a check, or
whose preprocessing or tokenizer the port doesn't cover, is recorded as such and keeps the torch path.

Which path runs is ModelConfig.engine: auto (the fast path where it applies: CPU, fp32/auto precision, no
torch.compile, onnxruntime installed), onnx (the fast path or an error saying why not), torch.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from toolkit.errors import ConfigError, InputError, ModelError
from toolkit.identity import ExtractorIdentity

FAST_FORMAT = 2  # bump when the entry layout or what is exported changes: old entries are rebuilt
IMAGE, TEXT, META, VOCAB, TEXTS = "image.onnx", "text.onnx", "meta.json", "bpe_merges.txt", "texts.safetensors"
IMAGE_DATA = "image.data"  # the image graph's weights (onnx.save_optimized)
TOKENIZER_PROBES = ["a photo of a dog.", "Ünïcödé café &amp; naïve", "  two\tspaces\nand lines ", "I'm 12.5 m; can't!",
                    "emoji 🏋️ squat", "x" * 300]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- which path

def blocker(cfg: Any) -> Optional[str]:
    """Why the fast path doesn't apply to this model config (None: it does). Cheap: no torch import."""
    if cfg.engine == "torch":
        return "engine is torch"
    if cfg.device == "cuda" or (cfg.device == "auto" and Path("/proc/driver/nvidia/version").exists()):
        return "it runs on the CPU only and a CUDA device is selected (device auto or cuda)"
    if cfg.precision in ("bf16", "fp16"):
        return f"it runs in fp32 and precision is {cfg.precision}"
    if getattr(cfg, "compile", False):
        return "compile is set"
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (`pip install onnxruntime`)"
    return None


def open_extractor(cfg: Any, cache_root: Path, notify: Callable[[str], None] = _stderr,
                   long_lived: bool = False, check: Optional[Callable[[Any], None]] = None) -> Any:
    """The extractor `clipkit predict` and `clipkit serve` run: an OnnxExtractor when the fast path applies and
    is prepared, else (preparing it first when it applies) a torch FeatureExtractor. ConfigError when engine
    is onnx and the fast path can't serve this model. `long_lived` (a server) keeps the text tower loaded
    between label sets; a one-shot command frees it before the image tower loads. `check(identity)` may refuse
    the model (e.g. a head trained on another) before the one-time preparation spends minutes on it."""
    reason = blocker(cfg)
    if reason is None:
        index = cache_root / "fast" / "index" / f"{config_key(cfg)}.json"
        entry = lookup(index)
        if isinstance(entry, Path):
            return OnnxExtractor(entry, cfg, keep_text_tower=long_lived)
        if entry is None:
            return prepare(cfg, cache_root, index, notify, check, long_lived)
        reason = entry  # recorded as unsupported
    if cfg.engine == "onnx":
        raise ConfigError(f"engine onnx can't run this model: {reason}; set {{field}} auto or torch", field="engine")
    return _torch_extractor(cfg)


def _torch_extractor(cfg: Any) -> Any:
    from toolkit.encoder.features import FeatureExtractor

    return FeatureExtractor.from_config(cfg)


# ---------------------------------------------------------------- the index: model config -> entry

def _abs(value: Optional[str]) -> Optional[str]:
    return os.path.abspath(value) if value and os.path.exists(value) else value


def config_key(cfg: Any) -> str:
    """Hash of what decides the model: name and weights (existing paths made absolute), activation, cache
    folder, and the versions of this format, of open_clip and of onnxruntime (whose optimized graphs the entry
    holds), read from their metadata, not imported."""
    from importlib.metadata import PackageNotFoundError, version

    def _version(package: str) -> Optional[str]:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    doc = {"name": _abs(cfg.name), "pretrained": _abs(cfg.pretrained), "quick_gelu": cfg.quick_gelu,
           "cache_dir": _abs(cfg.cache_dir), "format": FAST_FORMAT, "open_clip": _version("open_clip_torch"),
           "onnxruntime": _version("onnxruntime")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def _stamp(path: str) -> Optional[list[int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def lookup(index: Path) -> Path | str | None:
    """The entry folder when it is ready and its source files unchanged; a reason string when the model was
    found unsupported (and its files haven't changed since); None when it must be (re)built."""
    try:
        doc = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or any(_stamp(p) != s for p, s in (doc.get("stamps") or {}).items()):
        return None
    if doc.get("unsupported"):
        return str(doc["unsupported"])
    folder = index.parent.parent / str(doc.get("entry"))
    if not all((folder / name).is_file() for name in (IMAGE, IMAGE_DATA, META)):
        return None
    return folder


def _source_files(cfg: Any) -> list[str]:
    """The files a model config's extractor is built from: config JSON or folder files, the weights file."""
    from toolkit.models.weights import resolve

    src = resolve(cfg)
    files = [src.checkpoint] if src.checkpoint else []
    for value in (cfg.name, cfg.pretrained):
        if value and os.path.isfile(value):
            files.append(os.path.abspath(value))
        elif value and os.path.isdir(value):
            files += [str(p) for p in sorted(Path(value).glob("*.json"))]
    if src.folder:
        files += [str(p) for p in sorted(Path(src.folder).glob("*.json"))]
    return sorted(set(files))


# ---------------------------------------------------------------- building an entry (torch, once per model)

def prepare(cfg: Any, cache_root: Path, index: Path, notify: Callable[[str], None] = _stderr,
            check: Optional[Callable[[Any], None]] = None, long_lived: bool = False) -> Any:
    """Build the fast path's entry for `cfg` with the torch model and return the OnnxExtractor over it, the
    torch model freed (so this run already fills the prompt cache). A model the fast path can't take is
    recorded in the index (later runs go straight to torch), and this run gets the (fp32, CPU) torch extractor;
    with engine onnx it is a ConfigError."""
    from toolkit.fsio import write_text

    started = time.perf_counter()
    torch_cfg = cfg.model_copy(update={"device": "cpu", "precision": "fp32", "compile": False})
    extractor = _torch_extractor(torch_cfg)
    if check is not None:
        check(extractor.identity)
    label = extractor.identity.label
    notify(f"preparing the fast path for {label} (once): exporting its image and text towers to ONNX under "
           f"{cache_root / 'fast'}; rebuilt when the model's files change (engine torch skips this)")
    stamps = {p: _stamp(p) for p in _source_files(torch_cfg)}
    try:
        meta = _check_supported(extractor)
        entry = _write_entry(extractor, meta, cache_root / "fast", notify)
        doc = {"entry": entry.name, "stamps": stamps, "model": label}
    except ImportError as e:  # onnx missing: not the model's fault, so nothing is recorded
        if cfg.engine == "onnx":
            raise ConfigError(f"engine onnx needs the onnx package ({e}); `pip install onnx`, or set {{field}} "
                              "auto or torch", field="engine") from None
        notify(f"the fast path needs the onnx package to export {label} ({e}); it runs with torch")
        return extractor
    except (ModelError, InputError, OSError, ValueError, RuntimeError) as e:
        reason = e.message if hasattr(e, "message") else f"{e.__class__.__name__}: {str(e).splitlines()[0][:200]}"
        if cfg.engine == "onnx":
            raise ConfigError(f"engine onnx can't run {label}: {reason}; set {{field}} auto or torch",
                              field="engine") from None
        notify(f"the fast path can't take {label} ({reason}); it runs with torch")
        doc = {"unsupported": reason, "stamps": stamps, "model": label}
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        write_text(index, json.dumps(doc, indent=2))
    except OSError as e:  # a read-only cache: this run still answers, the next prepares again
        notify(f"can't write the fast path's index under {index.parent} ({e.strerror}); it runs with torch")
        return extractor
    if "entry" not in doc:
        return extractor
    notify(f"  the fast path for {label} is ready ({time.perf_counter() - started:.0f} s in all)")
    del extractor  # the torch model: this run goes on with ONNX Runtime, as later ones will
    return OnnxExtractor(entry, cfg, keep_text_tower=long_lived)


def _check_supported(extractor: Any) -> dict[str, Any]:
    """meta.json's content for a model the fast path can run exactly; ModelError naming what it can't."""
    from toolkit.encoder.preprocess import spec_from_transform

    spec = spec_from_transform(extractor.preprocess)
    if spec is None:
        raise ModelError("its image preprocessing is not the resize / crop / normalize the fast path repeats")
    tokenizer = _tokenizer_meta(extractor)
    return {"format": FAST_FORMAT, "identity": extractor.identity.to_dict(), "preprocess": spec.to_dict(),
            "logit_scale": extractor.logit_scale, "tokenizer": tokenizer}


def _tokenizer_meta(extractor: Any) -> dict[str, Any]:
    """The tokenizer's settings when bpe.BpeTokenizer gives the same ids; ModelError otherwise."""
    from toolkit.encoder.bpe import BpeTokenizer

    tok, vocab = extractor.tokenizer, extractor.plain_bpe()
    if vocab is None:
        raise ModelError(f"its tokenizer ({type(tok).__name__}) is not CLIP's plain BPE tokenizer")
    ours = BpeTokenizer(vocab, tok.context_length)
    if not np.array_equal(ours(TOKENIZER_PROBES), tok(TOKENIZER_PROBES).numpy()):
        raise ModelError("the torch-free tokenizer disagrees with the model's on the probe prompts")
    tower = extractor._text_tower
    return {"vocab": vocab, "context_length": int(tok.context_length),
            "cut": tower is not None, "pad_id": int(tower.pad_id) if tower is not None else 0}


def _write_entry(extractor: Any, meta: dict[str, Any], root: Path, notify: Callable[[str], None]) -> Path:
    """Export both towers into a temporary folder, save ONNX Runtime's optimized graphs, check those against
    torch, and swap the folder in as the entry. One progress line on stderr per tower."""
    from toolkit.encoder.bpe import write_plain
    from toolkit.fsio import atomic_dir

    key = json.dumps({"identity": meta["identity"], "format": FAST_FORMAT}, sort_keys=True)
    folder = root / hashlib.sha256(key.encode()).hexdigest()[:20]
    with atomic_dir(folder) as tmp:
        err_image = _build_tower(extractor, tmp, "image", notify)
        err_text = _build_tower(extractor, tmp, "text", notify)
        write_plain(meta["tokenizer"]["vocab"], tmp / VOCAB)
        meta = {**meta, "tokenizer": {**meta["tokenizer"], "vocab": VOCAB},
                "parity": {"image": err_image, "text": err_text}}
        (tmp / META).write_text(json.dumps(meta, indent=2))
    _drop_old_formats(root, notify)
    return folder


def _drop_old_formats(root: Path, notify: Callable[[str], None]) -> None:
    """Remove entries an older FAST_FORMAT wrote: no index points at them any more (the format is part of both
    keys), and a ViT-B-32 entry is ~600 MB. Folders being written (dot names) and unreadable ones are left."""
    import shutil

    for folder in root.iterdir():
        if folder.name.startswith(".") or folder.name == "index" or not folder.is_dir():
            continue
        try:
            old = json.loads((folder / META).read_text()).get("format") != FAST_FORMAT
        except (OSError, ValueError, AttributeError):
            continue
        if old:
            shutil.rmtree(folder, ignore_errors=True)
            notify(f"  removed {folder.name}, an entry of an older clipkit fast-path format")


def _build_tower(extractor: Any, folder: Path, tower: str, notify: Callable[[str], None]) -> float:
    """One tower into `folder` as ONNX Runtime optimized it, checked against torch: max |diff|, ModelError past
    1e-4, and a progress line."""
    from toolkit.encoder.onnx import export_optimized

    out = folder / (IMAGE if tower == "image" else TEXT)
    err, t_export, t_check = export_optimized(extractor, tower, out, [t.strip() or "a" for t in TOKENIZER_PROBES[:5]])
    if not err < 1e-4:
        raise ModelError(f"the ONNX {tower} graph differs from torch by {err:.1e} (max |diff|)")
    notify(f"  {tower} tower: exported in {t_export:.0f} s, optimized and checked against torch in {t_check:.0f} s "
           f"(max |diff| {err:.0e})")
    return err


# ---------------------------------------------------------------- running an entry (numpy + onnxruntime)

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

            self._image = OnnxImageEncoder(self.folder / IMAGE, optimized=True)
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
