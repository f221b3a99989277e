"""MultiLabelCacheHead: a Tip-Adapter-style cache for multi-label heads (after Zhang et al., ECCV 2022).

The cache's keys are the L2-normalized training features (N, D), its values their labels as signs (N, C): +1
where the image carries the class, -1 where it doesn't. A feature f scores, per class c,

    logit_c = base_c(f) + alpha_c * vote_c(f),   vote(f) = A @ values / sum(A),   A = exp(-beta * (1 - f @ keys.T))

base(f) = f @ coef_.T + intercept_ is a linear multi-label scorer: the zero-shot head's (positive minus negative
prompt, times the logit scale), or a trained blend's. Tip-Adapter adds A @ one_hot(values); here the vote is the
affinity-weighted mean sign of the keys, in [-1, 1], so alpha_c is in logit units whatever the number of keys
(a multi-label cache holds a different number of positives per class), and each class gets its own alpha_c:
the zero-shot scores are good for some classes and useless for others. alpha_c = 0 is the base alone; a large
beta makes the vote a nearest-neighbour one. The fitting (alpha per class and beta on val) is in
toolkit/fitting/multilabel_cache.py. numpy only.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from toolkit.heads.linear import LinearWeights
from toolkit.heads.multilabel import MultiLabelHead

CHUNK = 4096  # feature rows scored at a time: the (rows, N) affinity stays ~64 MB for a 4,000-key cache


def cache_vote(affinity: np.ndarray, beta: float, values: np.ndarray) -> np.ndarray:
    """(n, N) cosine affinities to the keys, (N, C) +-1 values -> (n, C) affinity-weighted mean signs in [-1, 1]."""
    a = np.exp(-beta * (1.0 - np.asarray(affinity, np.float64)))
    return (a @ values) / np.maximum(a.sum(axis=1, keepdims=True), 1e-30)


def sign_values(Y: np.ndarray) -> np.ndarray:
    """(N, C) 0/1 targets -> (N, C) float32 +1 / -1."""
    return np.where(np.asarray(Y) > 0, 1.0, -1.0).astype(np.float32)


class MultiLabelCacheHead(LinearWeights, MultiLabelHead):
    """A linear base (coef_, intercept_) plus a per-class weighted cache vote; see the module docstring."""

    type, default_method = "multilabel-cache", "cache"

    def __init__(self, classes: Sequence[str], coef: np.ndarray, intercept: Optional[np.ndarray], keys: np.ndarray,
                 values: np.ndarray, alpha: Sequence[float], beta: float, **kwargs: Any):
        super().__init__(classes, **kwargs)
        self._set_weights(coef, intercept)
        n = len(self.classes_)
        self.keys_ = np.asarray(keys, np.float32)
        self.values_ = np.asarray(values, np.float32)
        self.alpha_ = np.asarray(alpha, np.float64).reshape(-1)
        self.beta_ = float(beta)
        if self.keys_.ndim != 2 or self.keys_.shape[1] != self.coef_.shape[1] or self.values_.shape != (len(self.keys_), n):
            raise ValueError(f"keys {self.keys_.shape} and values {self.values_.shape} don't fit {n} classes of "
                             f"dimension {self.coef_.shape[1]}")
        if self.alpha_.shape != (n,) or not (np.isfinite(self.alpha_).all() and (self.alpha_ >= 0).all()):
            raise ValueError(f"alpha must hold {n} finite numbers >= 0 (one per class), got {self.alpha_.tolist()}")
        if not (np.isfinite(self.beta_) and self.beta_ >= 0):
            raise ValueError(f"beta must be finite and >= 0, got {beta!r}")

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """(n, D) L2-normalized features -> (n, C) logits: the base's plus alpha_c times the cache vote."""
        f = np.asarray(features, np.float32)
        out = super().decision_function(f).astype(np.float64)
        if not self.alpha_.any():
            return out.astype(np.float32)
        for i in range(0, len(f), CHUNK):
            out[i:i + CHUNK] += self.alpha_ * cache_vote(f[i:i + CHUNK] @ self.keys_.T, self.beta_, self.values_)
        return out.astype(np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        return {**super().tensors(), "keys": self.keys_, "values": self.values_}

    def header(self) -> dict[str, Any]:
        return {"embed_dim": int(self.coef_.shape[1]), "alpha": self.alpha_.tolist(), "beta": self.beta_,
                "n_keys": int(len(self.keys_)), **self.multilabel_header()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "alpha": dict(zip(self.classes_, self.alpha_.tolist())), "beta": self.beta_,
                "n_keys": int(len(self.keys_))}

    @classmethod
    def from_saved(cls, doc: dict[str, Any], tensors: dict[str, np.ndarray], identity) -> "MultiLabelCacheHead":
        return cls(doc["classes"], tensors["coef"], tensors["intercept"], tensors["keys"], tensors["values"],
                   doc["alpha"], doc["beta"], **cls.saved_multilabel(doc), **cls.saved_common(doc, identity))
