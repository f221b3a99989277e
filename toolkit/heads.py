"""What every head shares, in the lowest module: the Head protocol, softmax, the fitting result type, and
reading a head folder from disk. No torch, no scikit-learn, no MLflow.

A head has the scikit-learn classifier contract over L2-normalized features: `classes_`, `kind`, and
`predict_proba((n, D) features) -> (n, C)` with columns in `classes_` order, rows summing to 1. Heads are
folders on disk (`head.json` + `head.safetensors`); URIs (runs:/, models:/) are resolved to folders at the
edges by toolkit.tracking, never here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


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
    """Whether a --head value names a head in an MLflow store (resolved at the edges by toolkit.tracking)."""
    return str(spec).startswith(MLFLOW_SCHEMES)


def load_head(folder: str | Path):
    """A trained head from a local folder (head.json + head.safetensors); HeadError (one line) otherwise."""
    if is_mlflow_uri(str(folder)):
        raise ValueError(f"'{folder}' is an MLflow URI: resolve it to a folder with tracking.fetch_head first")
    from .probe import LinearProbe

    return LinearProbe.load(folder)
