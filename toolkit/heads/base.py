"""The head contract, in the lowest module: the `Head` protocol, `SavedHead` (what every head type shares),
softmax, and `load_head` (one reader for every head folder). numpy only: no torch, no MLflow.

THE CONTRACT (follow it when you add a head type or a fitting method):

1. A head is a fitted, immutable classifier over L2-normalized features, with scikit-learn's contract:
   `classes_` (list of C distinct names), `predict_proba((n, D)) -> (n, C)` (columns in `classes_` order,
   rows sum to 1, the temperature applied), `decision_function((n, D)) -> (n, C)` logits before it,
   `predict((n, D)) -> n names`, `describe() -> dict`. `Predictor` uses only what `Head` below lists.
2. Learned state ends in an underscore, everywhere: `coef_`, `intercept_`, `keys_`, `values_`, `alpha_`,
   `beta_`, and the calibration every head has: `temperature_`, `reject_below_` (None: nothing rejected),
   `rejection_` (how the threshold was chosen), and `openset_`: the out-of-set detector (heads/openset.py; None:
   no "unfamiliar" rejection), put on a copy by `heads.openset.with_detector` and saved by `save` / `load_head`
   (head.json "openset", tensors "openset.*"). Given (not learned) values have none: `identity`, `method`,
   `params`, `metrics`, `templates`, `logit_scale`.
3. Heads are never changed after they are built. Calibration makes a new head:
   `head.calibrated(temperature, reject_below, rejection)`; training metadata too: `head.annotated(params=...,
   metrics=...)`. Both return a copy of the same type; the original is untouched.
4. A head type derives from `SavedHead`: its `__init__(classes, <its learned arrays...>, **common)` calls
   `super().__init__(classes, **common)` (common: identity, method, params, metrics, temperature,
   reject_below, rejection), then sets and checks its own state. It implements `decision_function`,
   `tensors() -> {name: array}` (saved to head.safetensors), `header() -> {json fields}` (saved to head.json) and
   `from_saved(doc, tensors, identity)` (which passes `cls.saved_common(doc, identity)` on). It registers
   "type" -> "module:Class" in HEAD_TYPES; `load_head(folder)` (or `TheType.load(folder)`) reads any of them.
5. Heads are made by estimators in toolkit/fitting/ (scikit-learn style): hyper-parameters only in `__init__`,
   `fit(X, y, X_val, y_val, classes=..., zeroshot=..., identity=...)` returns the fitted head and sets `result_`,
   a `toolkit.fitting.result.FitResult` (the head, the chosen hyper-parameters, the sweep, val probabilities).
   y are class indices into `classes`; hyper-parameters are chosen on val.

Heads are folders on disk (`head.json` + `head.safetensors`, no pickle); URIs (runs:/, models:/) are resolved
to folders at the edges by toolkit.tracking.adapter, never here.
"""
from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from toolkit.errors import HeadError


class Head(Protocol):
    """What the Predictor, the video pipeline, the CLI and the server use of a head."""

    kind: str  # "probe" | "zeroshot" (only a zero-shot head takes other label sets)
    type: str  # its key in HEAD_TYPES
    classes_: list[str]
    templates: Sequence[str]  # the prompt templates of a zero-shot head; empty for the others
    identity: Any  # toolkit.identity.ExtractorIdentity of the features it was fitted on (None: unknown)
    method: str
    temperature_: float
    reject_below_: Optional[float]

    def predict_proba(self, features: np.ndarray) -> np.ndarray: ...

    def decision_function(self, features: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...

    def calibrated(self, temperature: float, reject_below: Optional[float] = None,
                   rejection: Optional[dict[str, Any]] = None) -> "Head": ...

    def save(self, folder: str | Path) -> Path: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, C) logits; rows sum to 1."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


HEAD_JSON, HEAD_WEIGHTS = "head.json", "head.safetensors"
HEAD_FORMAT = "clipkit-head"
# head.json "type" -> "module:Class" that reads it (lazily imported, so a head type costs nothing until used)
HEAD_TYPES: dict[str, str] = {"linear": "toolkit.heads.linear:LinearProbe", "zeroshot": "toolkit.heads.zeroshot:ZeroShotHead",
                              "cache": "toolkit.heads.cache:CacheHead"}
HEAD_TYPES.update({"multilabel-linear": "toolkit.heads.multilabel:MultiLabelLinearHead",  # sigmoid per class
                   "multilabel-zeroshot": "toolkit.heads.multilabel:MultiLabelZeroShotHead",
                   "multilabel-cache": "toolkit.heads.multilabel_cache:MultiLabelCacheHead"})


class SavedHead:
    """Base of every head: calibration ("none of these" included), the scikit-learn contract over logits,
    the head folder format, and copies instead of changes (see the module docstring's contract).

    Probabilities are softmax(logits / temperature_); the temperature is fitted on validation logits
    (heads/calibration.py) and saved with the head.
    """

    kind = "probe"
    type = "linear"
    default_method = ""
    templates: Sequence[str] = ()
    openset_ = None  # toolkit.heads.openset.OpenSetDetector ("unfamiliar" rejections) or None; see with_detector

    def __init__(self, classes: Sequence[str], identity=None, method: Optional[str] = None, params=None,
                 metrics=None, temperature: float = 1.0, reject_below: Optional[float] = None,
                 rejection: Optional[dict[str, Any]] = None) -> None:
        self.classes_ = check_classes(classes)
        self.identity = identity
        self.method = self.default_method if method is None else method
        self.params, self.metrics = dict(params or {}), dict(metrics or {})
        self._set_calibration(temperature, reject_below, rejection)

    def _set_calibration(self, temperature: float, reject_below: Optional[float],
                         rejection: Optional[dict[str, Any]]) -> None:
        t = float(temperature)
        if not (np.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if reject_below is not None and not 0.0 <= float(reject_below) <= 1.0:
            raise ValueError(f"reject_below must be in [0, 1], got {reject_below!r}")
        self.temperature_ = t
        self.reject_below_ = None if reject_below is None else float(reject_below)
        self.rejection_ = dict(rejection or {})  # how reject_below_ was chosen: {rule, target, val metrics}

    # -- new heads from this one (a head is never changed)
    def calibrated(self, temperature: float, reject_below: Optional[float] = None,
                   rejection: Optional[dict[str, Any]] = None) -> "SavedHead":
        """This head with another temperature and "none of these" rule (a copy; this head is unchanged)."""
        head = copy.copy(self)
        head._set_calibration(temperature, reject_below, rejection)
        return head

    def annotated(self, params: Optional[dict[str, Any]] = None,
                  metrics: Optional[dict[str, Any]] = None) -> "SavedHead":
        """This head with `params` / `metrics` merged into its own (a copy; this head is unchanged)."""
        head = copy.copy(self)
        head.params, head.metrics = {**self.params, **(params or {})}, {**self.metrics, **(metrics or {})}
        return head

    # -- scoring
    def decision_function(self, features: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(n, D) features -> (n, C) calibrated probabilities, columns in `classes_` order, rows sum to 1."""
        return softmax(self.decision_function(features) / self.temperature_)

    def predict(self, features: np.ndarray) -> list[str]:
        return [self.classes_[i] for i in self.decision_function(features).argmax(axis=1)]

    def calibration(self) -> dict[str, Any]:
        """The calibration as saved in head.json (keys without the underscore: the file format)."""
        return {"temperature": self.temperature_, "reject_below": self.reject_below_, "rejection": self.rejection_}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "type": self.type, "labels": self.classes_, "method": self.method,
                "params": self.params, "metrics": self.metrics, "calibration": self.calibration(),
                "extractor": self.identity.label if self.identity is not None else None,
                "openset": self.openset_.describe() if self.openset_ is not None else None}

    # -- persistence
    def tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def header(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_saved(cls, doc: dict[str, Any], tensors: dict[str, np.ndarray], identity):
        raise NotImplementedError

    @classmethod
    def saved_common(cls, doc: dict[str, Any], identity) -> dict[str, Any]:
        """The `SavedHead.__init__` keywords of a head.json document (what every head type saves alike)."""
        cal = doc.get("calibration") or {}
        return {"identity": identity, "method": doc.get("method", cls.default_method), "params": doc.get("params"),
                "metrics": doc.get("metrics"), "temperature": cal.get("temperature", 1.0),
                "reject_below": cal.get("reject_below"), "rejection": cal.get("rejection")}

    @classmethod
    def load(cls, folder: str | Path) -> "SavedHead":
        """A head folder of this type (HeadError when the folder holds another type); see `load_head`."""
        head = load_head(folder)
        if cls is not SavedHead and not isinstance(head, cls):
            raise HeadError(f"head folder '{folder}' holds a {head.type} head, not a {cls.type} one")
        return head

    def save(self, folder: str | Path) -> Path:
        """Write the head folder atomically (a temp folder beside it, then a rename over the old one), readable
        by others as the umask allows (0755 / 0644 under the usual 022)."""
        from safetensors.numpy import save as safetensors_bytes

        from toolkit.fsio import atomic_dir

        folder = Path(folder)
        det = self.openset_
        tensors = {k: np.ascontiguousarray(v, np.float32)
                   for k, v in {**self.tensors(), **(det.tensors() if det is not None else {})}.items()}
        doc = {"format": HEAD_FORMAT, "format_version": 2, "type": self.type, "kind": self.kind,
               "classes": self.classes_, "method": self.method, "params": self.params, "metrics": self.metrics,
               "calibration": self.calibration(), **self.header(),
               **({"openset": det.describe()} if det is not None else {}),
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
    seen: set[str] = set()  # linear time: 100,000 classes load in milliseconds
    dup = next((c for c in classes if c in seen or seen.add(c)), None)
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

    if doc.get("format") != HEAD_FORMAT:
        raise ValueError(f"unknown head format {doc.get('format')!r}")
    name = doc.get("type")
    if name not in HEAD_TYPES:
        raise ValueError(f"unknown head type {name!r} (known: {', '.join(HEAD_TYPES)})")
    module, cls = HEAD_TYPES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_head(folder: str | Path):
    """A trained head from a local folder (head.json + head.safetensors); HeadError (one line, naming the
    folder and the fix) when it is missing, corrupt, or fails the schema."""
    if re.match(r"[A-Za-z][\w+.-]+:/", str(folder)):  # runs:/, models:/ ...: resolved at the edges (tracking.adapter)
        raise ValueError(f"'{folder}' is a URI, not a head folder: resolve it to a folder at the edge first "
                         "(tracking.adapter.fetch_head)")
    folder = Path(folder)
    if not folder.is_dir():
        raise HeadError(f"head folder '{folder}' not found; train one with `clipkit train-probe`", field="head")
    if not (folder / HEAD_JSON).is_file() or not (folder / HEAD_WEIGHTS).is_file():
        raise HeadError(f"'{folder}' is not a head folder (needs {HEAD_JSON} and {HEAD_WEIGHTS}); "
                        "pass a folder that `clipkit train-probe` wrote", field="head")
    try:
        from safetensors.numpy import load_file

        from toolkit.heads.saved import NEEDED, read_head_tensors

        doc = json.loads((folder / HEAD_JSON).read_text())
        if not isinstance(doc, dict):
            raise ValueError(f"{HEAD_JSON} holds a {type(doc).__name__}, not an object")
        head_type = _head_type(doc)
        tensors = read_head_tensors(folder / HEAD_WEIGHTS, doc, head_type.type) \
            if head_type.type in NEEDED else load_file(str(folder / HEAD_WEIGHTS))  # only what the type reads
        identity = None
        if doc.get("identity") is not None:
            from toolkit.identity import ExtractorIdentity

            identity = ExtractorIdentity.from_dict(doc["identity"])
        head = head_type.from_saved(doc, tensors, identity)
        if doc.get("openset") is not None:  # heads saved before issue 22 have none
            from toolkit.heads.openset import read_detector, with_detector

            head = with_detector(head, read_detector(folder / HEAD_WEIGHTS, doc["openset"]))
    except Exception as e:  # JSON, safetensors header, schema, shapes: all mean "corrupt"
        raise HeadError(f"head folder '{folder}' is corrupt ({e.__class__.__name__}: {str(e)[:200]}); "
                        "train it again with `clipkit train-probe`") from None
    if not all(np.isfinite(t).all() for t in head.tensors().values()):
        raise HeadError(f"head folder '{folder}' has non-finite weights; train it again")
    return head
