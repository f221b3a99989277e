"""CacheHead: Tip-Adapter's training-free cache model over the zero-shot classifier (Zhang et al., ECCV 2022).

The cache's keys are the L2-normalized training features (N, D), its values their one-hot labels (N, C).
A feature f scores

    logits = s * f @ W.T + alpha * (s / 100) * exp(-beta * (1 - f @ keys.T)) @ values

with W (C, D) the zero-shot class embeddings and s the model's logit scale. Tip-Adapter writes the first term
as 100 * f @ W.T (CLIP's scale); the s / 100 keeps the ratio of the two terms, and so the meaning of alpha,
the same for a model with another logit scale. alpha = 0 is the zero-shot head; a large alpha and beta make
it a nearest-neighbour vote. Both are chosen on val by grid search (`search_alpha_beta`).

The fitting (alpha and beta on val, Tip-Adapter-F's trained keys) is in toolkit/fitting/tip_adapter.py.

numpy only.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from toolkit.heads.base import SavedHead

CHUNK = 4096  # feature rows scored at a time: the (rows, N) affinity stays ~64 MB for a 4,000-key cache


class CacheHead(SavedHead):
    """The zero-shot logits plus the cache's; `classes_` order is the rows of W and the columns of values."""

    kind, type, default_method = "probe", "cache", "cache"

    def __init__(self, classes: Sequence[str], zeroshot_coef: np.ndarray, logit_scale: float, keys: np.ndarray,
                 values: np.ndarray, alpha: float, beta: float, identity=None, method: Optional[str] = None,
                 params: Optional[dict[str, Any]] = None, metrics: Optional[dict[str, Any]] = None,
                 **calibration: Any):
        super().__init__(classes, identity, method, params, metrics, **calibration)
        self.coef_ = np.asarray(zeroshot_coef, np.float32)
        self.keys_ = np.asarray(keys, np.float32)
        self.values_ = np.asarray(values, np.float32)
        self.logit_scale, self.alpha_, self.beta_ = float(logit_scale), float(alpha), float(beta)
        n_classes, dim = len(self.classes_), self.coef_.shape[-1]
        if self.coef_.shape != (n_classes, dim) or self.keys_.ndim != 2 or self.keys_.shape[1] != dim \
                or self.values_.shape != (self.keys_.shape[0], n_classes):
            raise ValueError(f"zero-shot coef {self.coef_.shape}, keys {self.keys_.shape} and values "
                             f"{self.values_.shape} don't fit {n_classes} classes")
        if not (self.alpha_ >= 0 and self.beta_ >= 0 and np.isfinite([self.alpha_, self.beta_]).all()):
            raise ValueError(f"alpha and beta must be finite and >= 0, got {alpha!r}, {beta!r}")

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """(n, D) L2-normalized features -> (n, C) logits (before the temperature)."""
        f = np.asarray(features, np.float32)
        out = self.logit_scale * (f @ self.coef_.T)
        if self.alpha_ == 0:
            return out
        for i in range(0, len(f), CHUNK):
            out[i:i + CHUNK] += self.cache_weight() * cache_votes(f[i:i + CHUNK] @ self.keys_.T, self.beta_,
                                                                 self.values_)
        return out

    def cache_weight(self) -> float:
        """What multiplies the cache's votes: alpha on the zero-shot logits' scale."""
        return self.alpha_ * self.logit_scale / 100.0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.header()}

    def tensors(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_, "keys": self.keys_, "values": self.values_}

    def header(self) -> dict[str, Any]:
        return {"logit_scale": self.logit_scale, "alpha": self.alpha_, "beta": self.beta_,
                "embed_dim": int(self.coef_.shape[1]), "n_keys": int(self.keys_.shape[0])}

    @classmethod
    def from_saved(cls, doc: dict[str, Any], tensors: dict[str, np.ndarray], identity) -> "CacheHead":
        return cls(doc["classes"], tensors["coef"], doc["logit_scale"], tensors["keys"], tensors["values"],
                   doc["alpha"], doc["beta"], **cls.saved_common(doc, identity))


def cache_votes(affinity: np.ndarray, beta: float, values: np.ndarray) -> np.ndarray:
    """(n, N) cosine affinities to the keys -> (n, C) votes: exp(-beta * (1 - affinity)) @ values."""
    return np.exp(-beta * (1.0 - affinity)) @ values


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """(N,) class indices -> (N, C) float32 one-hot rows."""
    return np.eye(n_classes, dtype=np.float32)[np.asarray(y, np.int64)]
