"""Model names and weights -> what to build, each format detected from the files themselves:

    open_clip         an architecture ("ViT-B-32") with a pretrained tag, a local checkpoint, or nothing
    open_clip-config  an open_clip model-config JSON path, with a local checkpoint or nothing
    hf-hub            "hf-hub:org/repo": open_clip_config.json + weights in a Hugging Face repo
    open_clip-dir     DIR or "local-dir:DIR" with open_clip_config.json + open_clip_model.safetensors (or .bin)
    transformers-dir  DIR with config.json (model_type "clip") + model.safetensors (or a weights-only .bin),
                      converted to an open_clip CLIP in memory (hf_convert.py)

Checkpoints are .safetensors, weights-only pickles (.pt/.pth/.bin), or OpenAI's TorchScript .pt archives; loading
TorchScript runs code from the file, so an archive is accepted only when its sha256 is an official OpenAI release's
(open_clip's registry URLs carry it). A tag is built with the activation it was trained with (QuickGELU for OpenAI's).
Whatever is in the local cache loads from it without touching the network; only what isn't cached is fetched, and
an unreachable hub fails in seconds with one line. Owned by features.py: together the only open_clip importers.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import io
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

from toolkit.models import hf_convert
from toolkit.errors import ModelError
from toolkit.identity import file_sha256
from toolkit.models.model_size import check_fits
from toolkit.models.weight_files import (BYOW, CHECKPOINT_SUFFIXES, HUB_HOST, ModelSource, cached_tag_file,
                           checkpoint_kind, from_cache, hub_reachable, offline_error, read_json, torchscript_refusal)

HF_HUB, LOCAL_DIR = "hf-hub:", "local-dir:"
# open_clip's weights file names in a hub repo or open_clip folder, in the order its _find_checkpoint_in_dir prefers
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                     "pytorch_model.bin", "pytorch_model.pth", "model.pth")
PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")
JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")  # not weights: ints, a mask


def _open_clip():
    """open_clip, imported on first use: it pulls in transformers (seconds), which `ExtractorIdentity` users skip."""
    import open_clip

    return open_clip


def list_models() -> list[str]:
    return list(_open_clip().list_models())


def list_pretrained() -> list[tuple[str, str]]:
    """(architecture, tag) pairs that open_clip knows."""
    return [tuple(p) for p in _open_clip().list_pretrained()]


def is_cached(arch: str, tag: str, cache_dir: Optional[str] = None) -> bool:
    """Whether a tag's weights are in the local cache (Hugging Face's, or OpenAI's URL cache): such a model
    loads without a network."""
    try:
        return cached_tag_file(_open_clip().get_pretrained_cfg(arch, tag), cache_dir) is not None
    except Exception:  # a registry entry we can't read is simply not cached
        return False


def openai_imagenet_templates() -> list[str]:
    """OpenAI's 80 ImageNet prompt templates, as open_clip ships them, with '{}' for the label."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") if callable(t) else str(t) for t in OPENAI_IMAGENET_TEMPLATES]


# ---------------------------------------------------------------- OpenAI's releases

@functools.lru_cache(maxsize=1)
def official_openai() -> dict[str, tuple[str, ...]]:
    """sha256 of each official OpenAI CLIP release (from open_clip's registry URLs .../<sha256>/<arch>.pt) ->
    the open_clip architectures it fits."""
    out: dict[str, tuple[str, ...]] = {}
    open_clip = _open_clip()
    for arch, tag in open_clip.list_pretrained():
        url = open_clip.get_pretrained_cfg(arch, tag).get("url", "")
        if "openaipublic" in url:
            sha = url.rstrip("/").split("/")[-2]
            out[sha] = out.get(sha, ()) + (arch,)
    return out


# ---------------------------------------------------------------- resolving names

def resolve(cfg: Any) -> ModelSource:
    """ModelConfig -> ModelSource: the format detected, the weights found (cache first), sizes checked."""
    name = cfg.name
    pretrained = None if cfg.pretrained in (None, "", "none", "None") else cfg.pretrained
    if name.startswith(LOCAL_DIR) or _is_folder(name):
        src = _resolve_folder(Path(name[len(LOCAL_DIR):] if name.startswith(LOCAL_DIR) else name), pretrained)
    elif name.startswith(HF_HUB):
        src = _resolve_hub(name, cfg.cache_dir)
    else:
        src = _resolve_named(name, pretrained, cfg.cache_dir)
    quick_gelu = getattr(cfg, "quick_gelu", "auto")
    if quick_gelu != "auto":
        src.quick_gelu = bool(quick_gelu)
    check_fits(src.model_cfg, cfg.batch_size, f"'{name}'")
    return src


def _is_folder(name: str) -> bool:
    """A model folder given by path (an architecture name wins over a folder of that name in the CWD)."""
    return not name.startswith(HF_HUB) and Path(name).is_dir() and name not in _open_clip().list_models()


def _looks_like_file(value: str) -> bool:
    return value.endswith(CHECKPOINT_SUFFIXES) or os.sep in value or Path(value).is_file()


def _resolve_named(name: str, pretrained: Optional[str], cache_dir: Optional[str]) -> ModelSource:
    open_clip = _open_clip()
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise ModelError(f"model config '{name}' not found; pass an existing open_clip model-config JSON")
        doc = read_json(path, "model config")
        if "vision_cfg" not in doc or "text_cfg" not in doc:
            raise ModelError(f"model config '{name}' lacks vision_cfg/text_cfg; see open_clip's model_configs/*.json")
        open_clip.add_model_config(path)
        src = ModelSource("open_clip-config", path.stem, str(path.resolve()), arch=path.stem, model_cfg=doc)
    elif name.endswith(CHECKPOINT_SUFFIXES) and Path(name).is_file():
        return _resolve_bare_checkpoint(name)
    else:
        if (name.startswith((os.sep, ".", "~")) or name.endswith(os.sep)) and not Path(name).exists():
            raise ModelError(f"'{name}' not found; pass an existing model folder or model-config .json, or an "
                             "architecture name (see `clipkit models`)")
        if name not in open_clip.list_models():
            guesses = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(repr(g) for g in guesses)}? " if guesses else ""
            raise ModelError(f"unknown model '{name}'; {hint}see `clipkit models`, or pass a model-config .json path "
                             "or a model folder")
        src = ModelSource("open_clip", name, name, arch=name, model_cfg=open_clip.get_model_config(name))
    if pretrained is not None:
        (_attach_checkpoint if _looks_like_file(pretrained) else _attach_tag)(src, pretrained, cache_dir)
    return src


def _resolve_bare_checkpoint(path: str) -> ModelSource:
    """--model FILE: only an official OpenAI archive says which architecture it is."""
    archs = official_openai().get(file_sha256(path))
    if not archs:
        raise ModelError(f"'{path}' is a checkpoint, not a model; pass --model ARCH (or a model-config .json) "
                         f"--pretrained {path}")
    arch = next((a for a in archs if not a.endswith("-quickgelu")), archs[0])
    src = ModelSource("open_clip", arch, arch, arch=arch, model_cfg=_open_clip().get_model_config(arch))
    _attach_checkpoint(src, path, None)
    return src


def _attach_checkpoint(src: ModelSource, pretrained: str, _cache_dir: Optional[str]) -> None:
    path = Path(pretrained)
    if path.is_dir():
        raise ModelError(f"'{pretrained}' is a folder; a model folder brings its architecture too: pass it as --model")
    if not path.is_file():
        raise ModelError(f"checkpoint '{pretrained}' not found; pass an existing {'/'.join(CHECKPOINT_SUFFIXES)} file")
    if not pretrained.endswith(CHECKPOINT_SUFFIXES):
        raise ModelError(f"checkpoint '{pretrained}' has an unknown suffix; use one of {', '.join(CHECKPOINT_SUFFIXES)}")
    src.checkpoint, src.kind, src.sha256 = str(path.resolve()), checkpoint_kind(path), file_sha256(path)
    archs = official_openai().get(src.sha256)
    if src.kind == "torchscript" and not archs:
        raise torchscript_refusal(pretrained, src.sha256)
    if archs:  # OpenAI's own file: trained with QuickGELU
        if src.format == "open_clip" and src.arch not in archs:
            raise ModelError(f"'{pretrained}' is OpenAI's {archs[0]} release, not {src.arch}; pass --model {archs[0]}")
        src.quick_gelu = True


def _attach_tag(src: ModelSource, tag: str, cache_dir: Optional[str]) -> None:
    open_clip = _open_clip()
    tags = open_clip.list_pretrained_tags_by_model(src.arch)
    if tag not in tags:
        hint = f"known tags for {src.arch}: {', '.join(tags)}" if tags else f"{src.arch} has no pretrained tags"
        raise ModelError(f"unknown pretrained tag '{tag}' for model '{src.arch}'; {hint}; or pass a local checkpoint file")
    tcfg = open_clip.get_pretrained_cfg(src.arch, tag)
    src.tag, src.quick_gelu = tag, bool(tcfg.get("quick_gelu", False))  # what the weights were trained with
    src.preprocess = {k: tcfg[k] for k in PREPROCESS_KEYS if k in tcfg}
    cached = cached_tag_file(tcfg, cache_dir)
    if cached:
        src.checkpoint, src.kind = cached, checkpoint_kind(cached)
        src.sha256 = file_sha256(cached) if src.kind == "torchscript" else None
        return
    host = urlparse(tcfg["url"]).hostname if tcfg.get("url") and not tcfg.get("hf_hub") else HUB_HOST
    if not hub_reachable(host or HUB_HOST):
        raise offline_error(f"model '{src.arch}' with pretrained tag '{tag}'")
    src.download = True


def _resolve_hub(name: str, cache_dir: Optional[str]) -> ModelSource:
    """hf-hub:org/repo from the cache's snapshot folder when config and weights are there (open_clip's local-dir:)."""
    repo = name[len(HF_HUB):].strip("/")
    if not repo:
        raise ModelError("empty hf-hub name 'hf-hub:'; use the form hf-hub:org/repo")
    config = from_cache(repo, "open_clip_config.json", cache_dir)
    weights = [w for w in (from_cache(repo, n, cache_dir) for n in OPEN_CLIP_WEIGHTS[:4]) if w] if config else []
    if config and any(Path(w).parent == Path(config).parent for w in weights):
        snapshot = Path(config).parent
        model_cfg = read_json(snapshot / "open_clip_config.json", "hub model config").get("model_cfg")
        src = ModelSource("hf-hub", name, name, arch=f"{LOCAL_DIR}{snapshot}", model_cfg=model_cfg, folder=str(snapshot))
        src.tokenizer = _hub_tokenizer(model_cfg or {}, snapshot, cache_dir)
        return src
    if not hub_reachable():
        raise offline_error(f"'{name}'")
    return ModelSource("hf-hub", name, name, arch=name, download=True)


def _hub_tokenizer(model_cfg: dict, snapshot: Path, cache_dir: Optional[str]) -> Optional[Callable[[], Callable]]:
    """A cached hub model's HF tokenizer from the cache (its own snapshot, or the named tokenizer repo's);
    None when open_clip's tokenizer for the snapshot folder will do."""
    text = model_cfg.get("text_cfg") or {}
    name = text.get("hf_tokenizer_name")
    if not name or (snapshot / "tokenizer_config.json").is_file() or (snapshot / "tokenizer.json").is_file():
        return None
    cached = from_cache(name, "tokenizer_config.json", cache_dir) or from_cache(name, "tokenizer.json", cache_dir)
    if cached is None and not hub_reachable():
        raise offline_error(f"the tokenizer '{name}'")

    def build():
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(str(Path(cached).parent) if cached else name, context_length=text.get("context_length", 77),
                           cache_dir=cache_dir, tokenizer_mode=text.get("tokenizer_mode"),
                           **(text.get("tokenizer_kwargs") or {}))
    return build


def _resolve_folder(folder: Path, pretrained: Optional[str]) -> ModelSource:
    if not folder.is_dir():
        raise ModelError(f"model folder '{folder}' not found; pass an existing folder")
    if pretrained is not None and _looks_like_file(pretrained):
        raise ModelError(f"model folder '{folder}' brings its own weights; drop --pretrained '{pretrained}'")
    folder = folder.resolve()
    if (folder / "open_clip_config.json").is_file():
        return _open_clip_folder(folder)
    hf = hf_convert.read_config(folder)
    if hf is None:
        raise ModelError(f"'{folder}' is neither an open_clip folder (open_clip_config.json + weights) nor a "
                         f"transformers CLIP folder (config.json + model.safetensors); {BYOW}")
    if hf.get("model_type") != "clip":
        raise ModelError(f"'{folder}' is a transformers folder of model_type {hf.get('model_type')!r}; only 'clip' "
                         "converts to open_clip (for other models use their open_clip hf-hub: name)")
    weights = hf_convert.weights_file(folder)
    if weights is None:
        raise ModelError(f"transformers CLIP folder '{folder}' has config.json but no weights; add model.safetensors "
                         "(or pytorch_model.bin)")
    model_cfg = hf_convert.open_clip_config(hf, str(folder))
    src = ModelSource("transformers-dir", folder.name, str(folder), model_cfg=model_cfg, checkpoint=str(weights),
                      kind=checkpoint_kind(weights), sha256=file_sha256(weights), quick_gelu=model_cfg["quick_gelu"],
                      preprocess=hf_convert.preprocess_cfg(folder), folder=str(folder))
    src.tokenizer = lambda: hf_convert.tokenizer(folder, hf, model_cfg["text_cfg"]["context_length"])
    return src


def _open_clip_folder(folder: Path) -> ModelSource:
    doc = read_json(folder / "open_clip_config.json", "open_clip folder config")
    model_cfg = doc.get("model_cfg")
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "text_cfg" not in model_cfg:
        raise ModelError(f"open_clip folder '{folder}': open_clip_config.json lacks model_cfg with vision_cfg/text_cfg; "
                         "it is written by open_clip's push_to_hf_hub")
    found = [folder / n for n in OPEN_CLIP_WEIGHTS if (folder / n).is_file()] or \
        sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pth"))
    if not found:
        raise ModelError(f"open_clip folder '{folder}' has open_clip_config.json but no weights; add "
                         "open_clip_model.safetensors (or open_clip_pytorch_model.bin)")
    weights = found[0]  # the file open_clip's local-dir: loads
    src = ModelSource("open_clip-dir", folder.name, str(folder), arch=f"{LOCAL_DIR}{folder}", model_cfg=model_cfg,
                      checkpoint=str(weights), kind=checkpoint_kind(weights), sha256=file_sha256(weights),
                      folder=str(folder))
    if src.kind == "torchscript":
        raise torchscript_refusal(str(weights), src.sha256)
    return src


# ---------------------------------------------------------------- building

def build(src: ModelSource, device: Any, cache_dir: Optional[str]) -> tuple[Any, Callable, Callable]:
    """ModelSource -> (open_clip model in eval mode on `device`, image preprocess, tokenizer). One-line ModelError."""
    open_clip = _open_clip()
    try:
        model = _build_transformers(src) if src.format == "transformers-dir" else _create(src, cache_dir)
        tokenizer = src.tokenizer() if src.tokenizer else open_clip.get_tokenizer(src.arch, cache_dir=cache_dir)
    except ModelError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/KeyError/ValueError with long multi-line messages
        raise _load_error(src, e) from None
    from open_clip.transform import PreprocessCfg, image_transform_v2

    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    return model.to(device).eval().requires_grad_(False), preprocess, tokenizer


def _create(src: ModelSource, cache_dir: Optional[str]) -> Any:
    open_clip = _open_clip()
    gelu = {} if src.quick_gelu is None else {"force_quick_gelu": src.quick_gelu, "quick_gelu": src.quick_gelu}
    scheme = src.arch.startswith((LOCAL_DIR, HF_HUB))
    weights = None if scheme or src.kind == "torchscript" else (src.tag if src.download else src.checkpoint)
    model = open_clip.create_model(src.arch, pretrained=weights, cache_dir=cache_dir, weights_only=True,
                                   force_preprocess_cfg=src.preprocess or None, **gelu)
    if src.kind == "torchscript" and not scheme:
        model.load_state_dict(_torchscript_state_dict(src.checkpoint, src.sha256))
    return model


def _torchscript_state_dict(path: str, sha256: Optional[str]) -> dict:
    """The weights of an official OpenAI archive, read from the same bytes whose checksum is verified here."""
    import torch

    data = Path(path).read_bytes()
    if sha256 is None or hashlib.sha256(data).hexdigest() != sha256 or sha256 not in official_openai():
        raise torchscript_refusal(path, hashlib.sha256(data).hexdigest())
    with warnings.catch_warnings():  # torch deprecates TorchScript; OpenAI's releases are still in it
        warnings.filterwarnings("ignore", message=".*torch.jit.*", category=FutureWarning)
        sd = torch.jit.load(io.BytesIO(data), map_location="cpu").state_dict()
    return {k: v for k, v in sd.items() if k not in JIT_EXTRA_KEYS}


def _build_transformers(src: ModelSource) -> Any:
    from open_clip.model import CLIP, set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg

    cfg = {**src.model_cfg, "quick_gelu": bool(src.quick_gelu)}
    model = CLIP(**cfg)
    sd = hf_convert.to_open_clip(hf_convert.load_state_dict(Path(src.checkpoint)), src.folder)
    model.load_state_dict(sd, strict=True)
    pp = {**asdict(PreprocessCfg()), **src.preprocess, "size": model.visual.image_size}
    set_model_preprocess_cfg(model, pp)
    return model


def _load_error(src: ModelSource, e: Exception) -> ModelError:
    msg = " ".join(str(e).split()) or e.__class__.__name__
    if "weights only" in msg.lower() or "weights_only" in msg:
        return ModelError(f"{src.describe()}: '{src.checkpoint}' is a pickle that needs code from the file to load "
                          f"(not weights-only); convert it to .safetensors on a trusted machine ({BYOW})")
    fix = "pass the architecture the weights were trained with, or check the file"
    if src.kind == "safetensors" and src.format in ("open_clip", "open_clip-config"):
        from safetensors import safe_open

        try:
            with safe_open(src.checkpoint, "pt") as f:
                if any(k.startswith(("vision_model.", "text_model.")) for k in f.keys()):
                    fix = "these are transformers CLIP weights: pass their folder (with config.json) as --model DIR"
        except Exception:
            pass
    prefix = "could not load" if src.format in ("open_clip", "open_clip-config") else "could not load the"
    return ModelError(f"{prefix} {src.describe()}: {msg[:300]}; {fix}")
