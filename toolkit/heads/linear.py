"""LinearProbe: a linear classifier over CLIP features (logreg, linear, blend, and the saved zero-shot-as-probe).

The head has the scikit-learn classifier contract (`classes_`, `coef_` (C, D), `intercept_` (C,),
`predict_proba` with columns in `classes_` order), like ZeroShotHead, so the Predictor, the CLI and the
server use either one the same way. On disk a head is a folder (heads.base.SavedHead): `head.safetensors` (coef,
intercept; no pickle) and `head.json` (classes, the extractor's identity, the method, its hyper-parameters,
metrics, calibration).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from toolkit.heads.base import SavedHead


class LinearWeights:
    """What every linear head has (single-label LinearProbe, multi-label one-vs-rest): `coef_` (C, D) and
    `intercept_` (C,) over L2-normalized features, their logits, and their tensors on disk. A mixin before the
    head's SavedHead base, set up by `_set_weights` once `classes_` exists."""

    def _set_weights(self, coef: np.ndarray, intercept: Optional[np.ndarray]) -> None:
        n = len(self.classes_)
        self.coef_ = np.asarray(coef, np.float32)
        self.intercept_ = np.zeros(n, np.float32) if intercept is None else np.asarray(intercept, np.float32).ravel()
        if self.coef_.ndim != 2 or self.coef_.shape[0] != n or self.intercept_.shape != (n,):
            raise ValueError(f"coef {self.coef_.shape} / intercept {self.intercept_.shape} don't fit {n} classes")

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """(n, D) L2-normalized features -> (n, C) logits (before the temperature / calibration)."""
        return np.asarray(features, np.float32) @ self.coef_.T + self.intercept_

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "embed_dim": int(self.coef_.shape[1])}

    def tensors(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}


class LinearProbe(LinearWeights, SavedHead):
    """softmax((features @ coef_.T + intercept_) / temperature_) over `classes_`."""

    kind, type, default_method = "probe", "linear", "logreg"

    def __init__(self, classes: Sequence[str], coef: np.ndarray, intercept: Optional[np.ndarray] = None,
                 identity=None, method: Optional[str] = None, params: Optional[dict[str, Any]] = None,
                 metrics: Optional[dict[str, Any]] = None, **calibration: Any):
        super().__init__(classes, identity, method, params, metrics, **calibration)
        self._set_weights(coef, intercept)

    def header(self) -> dict[str, Any]:
        return {"embed_dim": int(self.coef_.shape[1])}

    @classmethod
    def from_saved(cls, doc: dict[str, Any], tensors: dict[str, np.ndarray], identity) -> "LinearProbe":
        return cls(doc["classes"], tensors["coef"], tensors["intercept"], **cls.saved_common(doc, identity))
