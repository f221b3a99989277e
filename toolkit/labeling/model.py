"""The head a labelling session refits as labels arrive: the fast torch logistic regression at one C, wrapped as
a scikit-learn estimator (so cross_val_predict / StratifiedKFold drive it), blended with zero-shot while few
labels exist, and its k-fold accuracy on the labels so far.

Features are (n, D) L2-normalized rows; class indices index `classes`. torch is imported by fitting.logreg only.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

C_LABELS = 30.0  # inverse L2 strength; on the novel suite's demo features C in 10..100 is within 3 points at 39..364 labels
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # choose_c's candidates
PRIOR_WEIGHT = 2.0  # labels per class at which the head and zero-shot weigh the same in the blend


class TorchLogReg(ClassifierMixin, BaseEstimator):
    """scikit-learn's LogisticRegression(C) contract on fitting.logreg.fit_fixed_c (L-BFGS in torch).

    `n_classes` fixes the width of coef_ (classes absent from a fold get weights that stay low); `classes_`
    are the labels seen in `fit`, as scikit-learn's cross_val_predict expects."""

    def __init__(self, C: float = C_LABELS, n_classes: Optional[int] = None):
        self.C, self.n_classes = C, n_classes

    def fit(self, X: np.ndarray, y: np.ndarray) -> "TorchLogReg":
        from toolkit.fitting.logreg import fit_fixed_c

        y = np.asarray(y, np.int64)
        self.classes_ = np.unique(y)
        width = int(self.n_classes or (y.max() + 1))
        fit = fit_fixed_c(np.asarray(X, np.float32), y, self.C, n_classes=width, device="cpu")
        self.coef_, self.intercept_ = fit.coef, fit.intercept
        return self

    def full_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities over every class index (rows sum to 1)."""
        from toolkit.heads.base import softmax

        return softmax(np.asarray(X, np.float32) @ self.coef_.T + self.intercept_)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, len(classes_)): the seen classes' columns, renormalized."""
        p = self.full_proba(X)[:, self.classes_]
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def blend_weight(n_labels: int, n_classes: int, prior_weight: float = PRIOR_WEIGHT) -> float:
    """The head's share in head + zero-shot: n / (n + prior_weight * C); 1 without a zero-shot prior."""
    return n_labels / (n_labels + prior_weight * n_classes)


def current_proba(X_labelled: np.ndarray, y: np.ndarray, X: np.ndarray, n_classes: int,
                  zeroshot: Optional[np.ndarray] = None, C: float = C_LABELS) -> np.ndarray:
    """(len(X), n_classes) probabilities of the head fitted on the labels so far, blended with `zeroshot`
    ((len(X), n_classes) or None) by `blend_weight`. With labels of fewer than two classes: zero-shot (or
    uniform without it)."""
    y = np.asarray(y, np.int64)
    if len(np.unique(y)) < 2:
        return zeroshot if zeroshot is not None else np.full((len(X), n_classes), 1.0 / n_classes)
    head = TorchLogReg(C, n_classes).fit(X_labelled, y).full_proba(X)
    if zeroshot is None:
        return head
    w = blend_weight(len(y), n_classes)
    return w * head + (1 - w) * zeroshot


def out_of_fold_proba(X: np.ndarray, y: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0,
                      C: float = C_LABELS) -> np.ndarray:
    """(n, n_classes) held-out probabilities: each row scored by a head fitted without its fold
    (StratifiedKFold, at most `folds` folds, at least 2; needs two rows of some class)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(y, np.int64)
    k = int(min(folds, np.bincount(y).max()))
    if k < 2 or len(np.unique(y)) < 2:
        raise ValueError("k-fold scores need at least two labels of one class and two classes")
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has only 1 member": expected early on
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # "number of classes in training fold ... does not match"
        p = cross_val_predict(TorchLogReg(C, n_classes), np.asarray(X, np.float32), y, cv=cv, method="predict_proba")
    out = np.zeros((len(y), n_classes))
    out[:, np.unique(y)] = p  # cross_val_predict orders columns by the labels present
    return out


def choose_c(X: np.ndarray, y: np.ndarray, n_classes: int, grid: Sequence[float] = C_GRID, folds: int = 5,
             seed: int = 0) -> tuple[float, np.ndarray]:
    """(C, its (n, n_classes) held-out probabilities): the C of `grid` whose k-fold probabilities give the given
    labels the lowest log loss (with noisy labels a large C fits the noise; the held-out loss says so)."""
    y = np.asarray(y, np.int64)
    best: Optional[tuple[float, float, np.ndarray]] = None
    for C in grid:
        p = out_of_fold_proba(X, y, n_classes, folds, seed, C)
        loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
        if best is None or loss < best[0]:
            best = (loss, C, p)
    return best[1], best[2]


@dataclass
class Standing:
    """Where a labelling session stands: the head's k-fold accuracy on the labels so far and zero-shot's on the
    same images (fractions; None when there are too few labels), with a binomial standard error."""

    n_labels: int
    head_accuracy: Optional[float]
    head_stderr: Optional[float]
    zeroshot_accuracy: Optional[float]

    def line(self) -> str:
        """'head 84% +/- 4 on 120 labels, zero-shot 61%'."""
        if self.head_accuracy is None:
            head = f"head: needs two labels in a class (k-fold) ({self.n_labels} labels so far)"
        else:
            head = (f"head {100 * self.head_accuracy:.0f}% +/- {100 * self.head_stderr:.0f} on "
                    f"{self.n_labels} labels")
        zs = "" if self.zeroshot_accuracy is None else f", zero-shot {100 * self.zeroshot_accuracy:.0f}%"
        return head + zs

    def to_dict(self) -> dict[str, Any]:
        return {"n_labels": self.n_labels, "head_accuracy": self.head_accuracy, "head_stderr": self.head_stderr,
                "zeroshot_accuracy": self.zeroshot_accuracy, "line": self.line()}


def standing(X: np.ndarray, y: np.ndarray, n_classes: int, zeroshot: Optional[np.ndarray] = None,
             seed: int = 0) -> Standing:
    """The head's k-fold accuracy on labelled rows (X, y) and zero-shot's ((n, n_classes) or None) on them."""
    y = np.asarray(y, np.int64)
    zs = None if zeroshot is None or not len(y) else float((zeroshot.argmax(axis=1) == y).mean())
    try:
        acc = float((out_of_fold_proba(X, y, n_classes, seed=seed).argmax(axis=1) == y).mean())
    except ValueError:
        return Standing(len(y), None, None, zs)
    return Standing(len(y), acc, float(np.sqrt(acc * (1 - acc) / len(y))), zs)
