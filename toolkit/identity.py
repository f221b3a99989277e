"""ExtractorIdentity: what makes two extractors' features comparable, and the model spec that rebuilds one.
Plain data, no torch.

Heads and feature stores carry it, so this module is cheap to import from anything that only reads them.
`model_overrides(identity)` turns the recorded spec back into config overrides ("model.name", "model.pretrained",
"model.quick_gelu") that build the same extractor, after checking that a recorded checkpoint is still where it
was with the same sha256 (one line naming the file and its sha256 otherwise). Identities written before the spec
fields existed still load; their spec fields are None.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from toolkit.errors import ModelError
from toolkit.runtime import cache_root

# Where model_overrides writes a recorded model-config JSON whose file is gone or changed.
FOLDER_FORMATS = ("hf-hub", "open_clip-dir", "transformers-dir")  # these bring their own weights


@dataclass(frozen=True)
class ExtractorIdentity:
    """What makes two extractors' features comparable, and how to rebuild the extractor. Heads and stores carry this."""

    model: str  # architecture name, a config JSON's stem, the hf-hub name, or a model folder's name
    pretrained: Optional[str]  # tag, checkpoint file name, or None (random init; folders and hub models)
    weights_sha256: Optional[str]  # first 16 hex digits of a local checkpoint's sha256; None for tags
    embed_dim: int
    image_size: list[int]
    mean: list[float]
    std: list[float]
    interpolation: str
    resize_mode: str
    extra: dict[str, Any] = field(default_factory=dict)
    # The model spec (None in identities written before clipkit recorded it):
    format: Optional[str] = None  # open_clip | open_clip-config | hf-hub | open_clip-dir | transformers-dir
    source: Optional[str] = None  # what --model rebuilds it from: architecture, hf-hub name, absolute JSON/folder path
    checkpoint: Optional[str] = None  # absolute path of the local weights (None for tags and hub models)
    checkpoint_sha256: Optional[str] = None  # its full sha256 (for a shard index: over the shards, in order)
    quick_gelu: Optional[bool] = None  # built with QuickGELU (OpenAI's activation) rather than GELU
    model_config: Optional[dict[str, Any]] = None  # the model-config JSON's content (format open_clip-config)
    # "int8": features of the fast path's image tower with int8 matrix-product weights (precision int8), close to
    # but not the same as the model's own; None: the model as trained (any of fp32/bf16/fp16)
    quantization: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExtractorIdentity":
        """From `to_dict` output, of this version or an older one; keys a newer clipkit added go to `extra`."""
        known = {f.name for f in fields(cls)}
        unknown = {k: v for k, v in d.items() if k not in known}
        kwargs = {k: v for k, v in d.items() if k in known}
        if unknown:
            kwargs["extra"] = {**(kwargs.get("extra") or {}), **unknown}
        return cls(**kwargs)

    def mismatch(self, other: "ExtractorIdentity") -> Optional[str]:
        """A human-readable reason why features of `other` can't be used where ours are, or None.
        Precision-independent; the activation is compared when both identities record it."""
        for key in ("model", "pretrained", "weights_sha256", "embed_dim"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                return f"{key} differs ({theirs!r} vs {mine!r})"
        if self.quick_gelu is not None and other.quick_gelu is not None and self.quick_gelu != other.quick_gelu:
            return f"quick_gelu differs ({other.quick_gelu!r} vs {self.quick_gelu!r})"
        return None

    def features_key(self) -> dict[str, Any]:
        """What decides the features (weights by content, architecture, activation, preprocessing), without
        where the files are: stores keyed on this stay reusable when a checkpoint or config file moves."""
        d = self.to_dict()
        for where in ("source", "checkpoint", "extra"):
            d.pop(where, None)
        if d.get("quantization") is None:  # keys (store fingerprints) from before the field existed stay valid
            d.pop("quantization", None)
        return d

    @property
    def label(self) -> str:
        return f"{self.model} / {self.pretrained or 'random-init'}"


# ---------------------------------------------------------------- checksums

_SHA_MEMO: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> sha256: hash a file once per process


def _sha256_of(path: Path) -> str:
    st = path.stat()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def file_sha256(path: str | Path) -> str:
    """Full sha256 of a weights file; for a shard index (*.index.json), of the shards' sha256s in index order."""
    path = Path(path)
    if not path.name.endswith(".index.json"):
        return _sha256_of(path)
    try:
        shards = dict.fromkeys(json.loads(path.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ModelError(f"'{path}' is not a valid shard index (no weight_map); re-download the folder") from None
    return hashlib.sha256("".join(_sha256_of(path.parent / s) for s in shards).encode()).hexdigest()


def check_checkpoint(identity: ExtractorIdentity, owner: str = "the head or store") -> None:
    """ModelError (one line naming the file and its sha256) when the recorded checkpoint is gone or changed."""
    path, want = identity.checkpoint, identity.checkpoint_sha256
    if not path or not want:
        return
    fix = f"put that file back or pass {{field}}/{{field:pretrained}} of {owner}'s model"
    if not Path(path).is_file():
        raise ModelError(f"{owner} was made with checkpoint '{path}' (sha256 {want}), which is no longer there; {fix}",
                         field="model")
    got = file_sha256(path)
    if got != want:
        raise ModelError(f"{owner} was made with checkpoint '{path}' (sha256 {want}), but that file now has sha256 "
                         f"{got}; {fix}", field="model")


# ---------------------------------------------------------------- rebuilding the extractor

def _config_file(identity: ExtractorIdentity, config_dir: Optional[str | Path]) -> str:
    """The model-config JSON to build from: the recorded path while its content is unchanged, else the recorded
    content written to `config_dir`/<digest>/<model>.json (open_clip names a config after its file stem)."""
    content, src = identity.model_config, Path(identity.source) if identity.source else None
    if src is not None and src.is_file():
        try:
            if content is None or json.loads(src.read_text()) == content:
                return str(src)
        except (OSError, ValueError):
            pass
    if content is None:
        raise ModelError(f"model config '{identity.source}' of {identity.label} is gone and its content was not "
                         "recorded; pass {field} with that config's path", field="model")
    text = json.dumps(content, indent=2, sort_keys=True)
    path = Path(config_dir or cache_root() / "model-configs") / hashlib.sha256(text.encode()).hexdigest()[:16] / f"{identity.model}.json"
    if not path.is_file():
        from toolkit.fsio import write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
    return str(path)


def _legacy_overrides(identity: ExtractorIdentity, owner: str) -> dict[str, Any]:
    """Identities from before the spec: an architecture with a tag (or random init) rebuilds; local files don't."""
    if identity.weights_sha256 or (identity.pretrained or "").endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise ModelError(f"{owner} was made with {identity.label} (checkpoint sha256 {identity.weights_sha256}...) by "
                         "a clipkit that did not record where the files were; pass {field} and {field:pretrained}",
                         field="model")
    return {"model.name": identity.model, "model.pretrained": identity.pretrained or "none"}


def model_overrides(identity: ExtractorIdentity, config_dir: Optional[str | Path] = None,
                    owner: str = "the head or store") -> dict[str, Any]:
    """Config overrides (dotted keys, as `load_config` takes) that rebuild the extractor `identity` describes:
    {"model.name": ..., "model.pretrained": ..., "model.quick_gelu": ...}; pretrained "none" means no weights
    beyond what the model itself brings (random init for an architecture; folders and hub models carry theirs).

    A model-config JSON that is gone or changed is rebuilt from the recorded content (written under `config_dir`,
    default <cache root>/model-configs, see toolkit.runtime.cache_root). Raises ModelError (one line; `owner` names who recorded it) when a
    recorded checkpoint moved or changed, or an identity from before the spec names a local file.
    Identities from before the spec don't record quick_gelu: the key is left out (the config's "auto" applies).
    """
    if identity.format is None:
        return _legacy_overrides(identity, owner)
    check_checkpoint(identity, owner)
    out: dict[str, Any] = {}
    if identity.format in FOLDER_FORMATS:
        out = {"model.name": identity.source, "model.pretrained": "none"}
    elif identity.format == "open_clip-config":
        out = {"model.name": _config_file(identity, config_dir),
               "model.pretrained": identity.checkpoint or identity.pretrained or "none"}
    else:
        out = {"model.name": identity.source or identity.model,
               "model.pretrained": identity.checkpoint or identity.pretrained or "none"}
    if identity.quick_gelu is not None:
        out["model.quick_gelu"] = identity.quick_gelu
    return out


def adopt_model(cfg, identity: Optional[ExtractorIdentity], owner: str):
    """Heads and stores remember their model: when none was given (flags or config file), a new config that
    builds the one `identity` records (`model_overrides`; one line if its checkpoint moved). A given model is
    kept (the same config is returned), and the head or store is then checked against it (and refused if it
    differs). `cfg` is a toolkit.config.Config; it is never changed."""
    if identity is None or {"name", "pretrained"} & cfg.model.model_fields_set:
        return cfg
    changes = {key.split(".", 1)[1]: value for key, value in model_overrides(identity, owner=owner).items()}
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=changes)})
