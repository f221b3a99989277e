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


class LinearProbe(SavedHead):
    """softmax((features @ coef_.T + intercept_) / temperature_) over `classes_`."""

    kind, type, default_method = "probe", "linear", "logreg"

    def __init__(self, classes: Sequence[str], coef: np.ndarray, intercept: Optional[np.ndarray] = None,
                 identity=None, method: Optional[str] = None, params: Optional[dict[str, Any]] = None,
                 metrics: Optional[dict[str, Any]] = None, **calibration: Any):
        super().__init__(classes, identity, method, params, metrics, **calibration)
        self.coef_ = np.asarray(coef, np.float32)
        self.intercept_ = np.zeros(len(self.classes_), np.float32) if intercept is None \
            else np.asarray(intercept, np.float32).reshape(-1)
        if self.coef_.ndim != 2 or self.coef_.shape[0] != len(self.classes_) \
                or self.intercept_.shape != (len(self.classes_),):
            raise ValueError(f"coef {self.coef_.shape} / intercept {self.intercept_.shape} don't fit "
                             f"{len(self.classes_)} classes")

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """(n, D) L2-normalized features -> (n, C) logits (before the temperature)."""
        return np.asarray(features, np.float32) @ self.coef_.T + self.intercept_

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "embed_dim": int(self.coef_.shape[1])}

    def tensors(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "intercept": self.intercept_}

    def header(self) -> dict[str, Any]:
        return {"embed_dim": int(self.coef_.shape[1])}

    @classmethod
    def from_saved(cls, doc: dict[str, Any], tensors: dict[str, np.ndarray], identity) -> "LinearProbe":
        return cls(doc["classes"], tensors["coef"], tensors["intercept"], **cls.saved_common(doc, identity))
