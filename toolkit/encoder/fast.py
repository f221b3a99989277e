"""The fast path of `clipkit predict`: ONNX Runtime on the CPU, no torch or open_clip import.

A cold `clipkit predict` used to spend 5-9 s importing torch and open_clip for a few milliseconds of model
work. Here the model's image and text towers are exported to ONNX once, the first time a model is used
(`prepare`, which needs torch that one time and says so on stderr, a progress line per tower; that run
then answers through the new graphs, filling the prompt cache), into clipkit's cache:

    <cache_root>/fast/<identity hash>/   image.onnx + image.data, text.onnx + text.data (the graphs as ONNX
                                         Runtime optimized them, weights beside them: a run loads them without
                                         optimizing again), meta.json (identity, preprocessing, logit scale,
                                         tokenizer), bpe_merges.txt (CLIP's vocabulary), texts.safetensors (prompt
                                         embeddings seen so far, text_cache.py), int8/ (precision int8 only,
                                         built on its first use: image.onnx + image.data with int8 matrix
                                         products, onnx.export_int8; meta.json with its cosine to fp32)
    <cache_root>/fast/index/<config hash>.json   the model config (name, weights, activation, cache folder)
                                         -> that folder, with the size and mtime of every file it was built from

This module builds and finds entries; onnx_extractor.OnnxExtractor runs one. A later run hashes its model
config, finds the index entry, checks those files' size and mtime (a changed or replaced checkpoint or model
config rebuilds the entry: the same stderr line again), and runs the graphs with numpy preprocessing
(preprocess.py) and a torch-free tokenizer (bpe.py). Every graph, the preprocessing and the tokenizer are
checked against the torch model when the entry is built; a model that fails a check, or whose preprocessing or
tokenizer the port doesn't cover, is recorded as such and keeps the torch path.

Which path runs is ModelConfig.engine: auto (the fast path where it applies: CPU, fp32/auto/int8 precision, no
torch.compile, onnxruntime installed), onnx (the fast path or an error saying why not), torch. `clipkit extract`
and `embed` run it too (open_extractor(bulk=True)), in one process.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from toolkit.encoder.onnx_extractor import IMAGE, IMAGE_DATA, INT8, META, TEXT, VOCAB, OnnxExtractor
from toolkit.errors import ConfigError, InputError, ModelError

FAST_FORMAT = 2  # bump when the entry layout or what is exported changes: old entries are rebuilt
MIN_INT8_COSINE = 0.95  # an int8 tower further than this from fp32 (min cosine, random images) is refused
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


def native_bf16() -> bool:
    """The CPU runs bf16 natively (AVX-512 BF16 or AMX flags in /proc/cpuinfo): there torch's precision auto is
    bf16, ~1.9x the fp32 that ONNX Runtime runs on a model's whole image tower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def open_extractor(cfg: Any, cache_root: Path, notify: Callable[[str], None] = _stderr,
                   long_lived: bool = False, check: Optional[Callable[[Any], None]] = None,
                   bulk: bool = False) -> Any:
    """The extractor `clipkit predict`, `serve`, `extract` and `embed` run: an OnnxExtractor when the fast path
    applies and is prepared, else (preparing it first when it applies) a torch FeatureExtractor. ConfigError
    when engine is onnx and the fast path can't serve this model. `long_lived` (a server) keeps the text tower
    loaded between label sets; a one-shot command frees it before the image tower loads. `check(identity)` may
    refuse the model (e.g. a head trained on another) before the one-time preparation spends minutes on it.
    `bulk` (extraction: encoding dominates, not start-up): with engine and precision auto, a CPU that runs
    bf16 natively keeps torch in bf16. Precision int8 runs only here (ConfigError where the fast path can't)."""
    reason = blocker(cfg)
    if reason is None and bulk and cfg.engine == "auto" and cfg.precision == "auto" and native_bf16():
        reason = "precision auto runs bf16 with torch on this CPU"
    if reason is None:
        index = cache_root / "fast" / "index" / f"{config_key(cfg)}.json"
        entry = lookup(index)
        if isinstance(entry, Path):
            return _onnx_extractor(entry, cfg, notify, long_lived)
        if entry is None:
            extractor = prepare(cfg, cache_root, index, notify, check, long_lived)
            if cfg.precision != "int8" or isinstance(extractor, OnnxExtractor):
                return extractor
            reason = "the fast path could not be prepared (said above)"
        else:
            reason = entry  # recorded as unsupported
    if cfg.precision == "int8":
        raise ConfigError(f"precision int8 runs only on the fast path (ONNX Runtime on the CPU), and here {reason}; "
                          "set {field} auto or fp32", field="precision")
    if cfg.engine == "onnx":
        raise ConfigError(f"engine onnx can't run this model: {reason}; set {{field}} auto or torch", field="engine")
    return _torch_extractor(cfg)


def _torch_extractor(cfg: Any) -> Any:
    from toolkit.encoder.features import FeatureExtractor

    return FeatureExtractor.from_config(cfg)


def _onnx_extractor(entry: Path, cfg: Any, notify: Callable[[str], None], long_lived: bool) -> "OnnxExtractor":
    """The OnnxExtractor over a ready entry; with precision int8, its int8 image tower built first if missing."""
    if cfg.precision == "int8" and not (entry / INT8 / IMAGE).is_file():
        _build_int8(entry, cfg, notify)
    return OnnxExtractor(entry, cfg, keep_text_tower=long_lived)


def _build_int8(entry: Path, cfg: Any, notify: Callable[[str], None]) -> None:
    """Write entry/int8/ (onnx.export_int8) from the torch model, once: torch is imported this one time."""
    from toolkit.encoder.onnx import export_int8
    from toolkit.fsio import atomic_dir

    extractor = _torch_extractor(cfg.model_copy(update={"device": "cpu", "precision": "fp32", "compile": False}))
    notify(f"preparing the int8 image tower of {extractor.identity.label} (once; precision int8) under {entry}")
    try:
        with atomic_dir(entry / INT8) as tmp:
            cosine, seconds = export_int8(extractor, tmp / IMAGE)
            if not cosine >= MIN_INT8_COSINE:
                raise ModelError(f"int8 changes {extractor.identity.label}'s image features too much (min cosine "
                                 f"{cosine:.3f} to fp32 on random images); set {{field}} fp32 or auto",
                                 field="precision")
            (tmp / META).write_text(json.dumps({"min_cosine_to_fp32": cosine}))
    except ImportError as e:  # onnx or onnxruntime.quantization missing
        raise ConfigError(f"precision int8 needs the onnx package ({e}); `pip install onnx`, or set {{field}} "
                          "auto or fp32", field="precision") from None
    notify(f"  int8 image tower: built and checked in {seconds:.0f} s (min cosine to fp32 {cosine:.4f})")


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
    return _onnx_extractor(entry, cfg, notify, long_lived)


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
