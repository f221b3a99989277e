"""What every head shares, in the lowest module: the Head protocol, softmax, the fitting result type, and
reading a head folder from disk. No torch, no scikit-learn, no MLflow.

Every head derives from `SavedHead`: one calibration (temperature, "none of these" threshold) and one folder
format for all head types. A head has the scikit-learn classifier contract over L2-normalized features: `classes_`, `kind`, and
`predict_proba((n, D) features) -> (n, C)` with columns in `classes_` order, rows summing to 1. Heads are
folders on disk (`head.json` + `head.safetensors`); URIs (runs:/, models:/) are resolved to folders at the
edges by toolkit.tracking.adapter, never here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from toolkit.errors import HeadError


class Head(Protocol):
    kind: str
    classes_: list[str]

    def predict_proba(self, features: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, C) logits; rows sum to 1."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class FitResult:
    """What a fitting method returns: final weights, the chosen hyper-parameters, and the sweep."""

    coef: np.ndarray  # (C, D)
    intercept: np.ndarray  # (C,)
    params: dict[str, Any]  # the chosen hyper-parameters and how they were chosen
    sweep: list[dict[str, Any]]  # {param, value, val_accuracy, val_loss}
    val_proba: np.ndarray  # (n_val, C) of the model picked on val (before any refit on train+val)


MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def is_mlflow_uri(spec: str) -> bool:
    """Whether a --head value names a head in an MLflow store (resolved at the edges by toolkit.tracking.adapter)."""
    return str(spec).startswith(MLFLOW_SCHEMES)


HEAD_JSON, HEAD_WEIGHTS = "head.json", "head.safetensors"
HEAD_FORMAT = "clipkit-head"
LEGACY_FORMATS = ("clipkit-linear-probe",)  # format_version 1: linear heads only, no calibration
# head.json "type" -> "module:Class" that reads it (lazily imported, so a head type costs nothing until used)
HEAD_TYPES: dict[str, str] = {"linear": "toolkit.heads.linear:LinearProbe", "zeroshot": "toolkit.heads.zeroshot:ZeroShotHead",
                              "cache": "toolkit.heads.cache:CacheHead"}


class SavedHead:
    """Base of every head: calibration ("none of these" included), the scikit-learn contract over logits,
    and the head folder format.

    Subclasses set `kind` ("probe" | "zeroshot"), `type` (its key in HEAD_TYPES), and implement
    `decision_function((n, D)) -> (n, C) logits`, `tensors() -> {name: array}`, `header() -> {json fields}`
    and `from_saved(doc, tensors, identity)`. Probabilities are softmax(logits / temperature); the
    temperature is fitted on validation logits (calibration.py) and saved with the head.
    """

    kind = "probe"
    type = "linear"

    def _init_common(self, classes: Sequence[str], identity=None, method: str = "", params=None, metrics=None,
                     temperature: float = 1.0, reject_below: Optional[float] = None,
                     rejection: Optional[dict[str, Any]] = None) -> None:
        self.classes_ = check_classes(classes)
        self.identity, self.method = identity, method
        self.params, self.metrics = dict(params or {}), dict(metrics or {})
        self.temperature = float(temperature)
        self.reject_below = None if reject_below is None else float(reject_below)
        self.rejection = dict(rejection or {})  # how reject_below was chosen: {rule, target, val metrics}
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if self.reject_below is not None and not 0.0 <= self.reject_below <= 1.0:
            raise ValueError(f"reject_below must be in [0, 1], got {reject_below!r}")

    # -- scoring
    def decision_function(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(n, D) features -> (n, C) calibrated probabilities, columns in `classes_` order, rows sum to 1."""
        return softmax(self.decision_function(features) / self.temperature)

    def predict(self, features: np.ndarray) -> list[str]:
        return [self.classes_[i] for i in self.decision_function(features).argmax(axis=1)]

    def calibration(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "reject_below": self.reject_below, "rejection": self.rejection}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "type": self.type, "labels": self.classes_, "method": self.method,
                "params": self.params, "metrics": self.metrics, "calibration": self.calibration(),
                "extractor": self.identity.label if self.identity is not None else None}

    # -- persistence
    def tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def header(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_saved(cls, doc: dict[str, Any], tensors: dict[str, np.ndarray], identity):
        raise NotImplementedError

    def save(self, folder: str | Path) -> Path:
        """Write the head folder atomically (a temp folder beside it, then a rename over the old one), readable
        by others as the umask allows (0755 / 0644 under the usual 022)."""
        from safetensors.numpy import save as safetensors_bytes

        from toolkit.fsio import atomic_dir

        folder = Path(folder)
        tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in self.tensors().items()}
        doc = {"format": HEAD_FORMAT, "format_version": 2, "type": self.type, "kind": self.kind,
               "classes": self.classes_, "method": self.method, "params": self.params, "metrics": self.metrics,
               "calibration": self.calibration(), **self.header(),
               "identity": self.identity.to_dict() if self.identity is not None else None,
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        with atomic_dir(folder) as tmp:
            # bytes written by Python, not safetensors' save_file, which creates its files 0600
            (tmp / HEAD_WEIGHTS).write_bytes(safetensors_bytes(tensors))
            (tmp / HEAD_JSON).write_text(json.dumps(doc, indent=2, default=_jsonable))
        return folder


def check_classes(classes: Any) -> list[str]:
    """A head's classes: a list of distinct, non-empty strings (ValueError naming the problem otherwise)."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple)):
        raise ValueError(f"classes must be a list of strings, got {type(classes).__name__}")
    bad = next((c for c in classes if not isinstance(c, str) or not c.strip()), None)
    if bad is not None or not classes:
        raise ValueError(f"classes must be non-empty strings, got {bad!r}" if classes else "classes is empty")
    dup = next((c for i, c in enumerate(classes) if c in classes[:i]), None)
    if dup is not None:
        raise ValueError(f"class {dup!r} appears twice")
    if len(classes) < 2:
        raise ValueError(f"a classifier needs at least two classes, got {list(classes)!r}")
    return list(classes)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _head_type(doc: dict[str, Any]):
    """The class that reads a head.json document."""
    import importlib

    fmt = doc.get("format")
    if fmt in LEGACY_FORMATS:
        name = "linear"
    elif fmt == HEAD_FORMAT:
        name = doc.get("type")
    else:
        raise ValueError(f"unknown head format {fmt!r}")
    if name not in HEAD_TYPES:
        raise ValueError(f"unknown head type {name!r} (known: {', '.join(HEAD_TYPES)})")
    module, cls = HEAD_TYPES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_head(folder: str | Path):
    """A trained head from a local folder (head.json + head.safetensors); HeadError (one line, naming the
    folder and the fix) when it is missing, corrupt, or fails the schema."""
    if is_mlflow_uri(str(folder)):
        raise ValueError(f"'{folder}' is an MLflow URI: resolve it to a folder with tracking.fetch_head first")
    folder = Path(folder)
    if not folder.is_dir():
        raise HeadError(f"head folder '{folder}' not found; train one with `clipkit train-probe DATA --out {folder}`")
    if not (folder / HEAD_JSON).is_file() or not (folder / HEAD_WEIGHTS).is_file():
        raise HeadError(f"'{folder}' is not a head folder (needs {HEAD_JSON} and {HEAD_WEIGHTS}); "
                        "pass the --out folder of `clipkit train-probe`")
    try:
        from safetensors.numpy import load_file

        doc = json.loads((folder / HEAD_JSON).read_text())
        if not isinstance(doc, dict):
            raise ValueError(f"{HEAD_JSON} holds a {type(doc).__name__}, not an object")
        tensors = load_file(str(folder / HEAD_WEIGHTS))
        identity = None
        if doc.get("identity") is not None:
            from toolkit.identity import ExtractorIdentity

            identity = ExtractorIdentity.from_dict(doc["identity"])
        head = _head_type(doc).from_saved(doc, tensors, identity)
    except Exception as e:  # JSON, safetensors header, schema, shapes: all mean "corrupt"
        raise HeadError(f"head folder '{folder}' is corrupt ({e.__class__.__name__}: {str(e)[:200]}); "
                        "train it again with `clipkit train-probe`") from None
    if not all(np.isfinite(t).all() for t in head.tensors().values()):
        raise HeadError(f"head folder '{folder}' has non-finite weights; train it again")
    return head
