"""Multi-label metrics and per-class thresholds.

Scores are (n_images, n_classes) independent probabilities (rows need not sum to 1); targets the same shape,
0/1. mAP is the macro mean of per-class average precision (scikit-learn's `average_precision_score`, the
step-wise area under the precision-recall curve), over classes with at least one positive. F1 is micro (all
decisions pooled) and macro (mean over classes) at given thresholds. Thresholds are chosen per class on val:
the best F1, or the lowest threshold whose precision reaches a target. Calibration error per class is the
binary ECE (15 equal-width bins of the class's probability vs the rate of positives).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

N_BINS = 15


def _check(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = np.asarray(scores, np.float64), np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (n_images, n_classes)")
    return scores, (targets > 0.5).astype(np.int64)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(C,) average precision per class; NaN for a class with no positive image."""
    from sklearn.metrics import average_precision_score

    scores, targets = _check(scores, targets)
    return np.asarray([average_precision_score(targets[:, j], scores[:, j]) if targets[:, j].any() else np.nan
                       for j in range(scores.shape[1])])


def f1_scores(decisions: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """{micro_f1, macro_f1, per_class (C,)} of 0/1 decisions; a class with no positives and no predictions
    scores F1 = 1 (nothing to find, nothing claimed), as scikit-learn's zero_division=1."""
    d, t = _check(decisions, targets)
    tp, fp, fn = (d * t).sum(0), (d * (1 - t)).sum(0), ((1 - d) * t).sum(0)
    denom = 2 * tp + fp + fn
    per = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    micro_denom = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / micro_denom) if micro_denom else 1.0
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0)
    return {"micro_f1": micro, "macro_f1": float(per.mean()), "per_class": per, "precision": precision,
            "recall": recall}


def as_thresholds(thresholds: float | Sequence[float] | np.ndarray, n_classes: int) -> np.ndarray:
    """One value for every class, or one per class -> (C,) float64."""
    t = np.broadcast_to(np.asarray(thresholds, np.float64), (n_classes,)).copy()
    return t


def decide(scores: np.ndarray, thresholds) -> np.ndarray:
    """(n, C) 0/1 decisions: a label is on where its score reaches its class's threshold."""
    scores = np.asarray(scores, np.float64)
    return (scores >= as_thresholds(thresholds, scores.shape[1])).astype(np.int64)


def best_f1_threshold(scores: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) of one class: the score cut that maximises F1 on (scores (n,), targets (n,)); cuts sit
    halfway between adjacent distinct scores, so a slightly shifted test score falls on the same side. A class
    without positives gets 1.0 (never on) unless a score reaches it."""
    s, t = np.asarray(scores, np.float64), np.asarray(targets) > 0.5
    if not t.any():
        return 1.0, 1.0
    order = np.argsort(-s, kind="stable")
    s_sorted, t_sorted = s[order], t[order]
    tp = np.cumsum(t_sorted)
    k = np.arange(1, len(s) + 1)  # predicted positives when cutting after position k
    f1 = 2 * tp / (k + t.sum())
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]  # only cut between distinct scores
    f1 = np.where(last, f1, -1.0)
    i = int(np.argmax(f1))
    below = s_sorted[i + 1] if i + 1 < len(s) else max(s_sorted[i] - 1e-3, 0.0)
    return float((s_sorted[i] + below) / 2), float(f1[i])


def precision_threshold(scores: np.ndarray, targets: np.ndarray, target: float) -> Optional[float]:
    """The lowest threshold of one class whose decisions on (scores, targets) have precision >= `target`;
    None when no threshold reaches it."""
    s, t = np.asarray(scores, np.float64), np.asarray(targets) > 0.5
    order = np.argsort(-s, kind="stable")
    s_sorted, t_sorted = s[order], t[order]
    prec = np.cumsum(t_sorted) / np.arange(1, len(s) + 1)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    ok = np.flatnonzero((prec >= target) & last & t_sorted)
    return None if not len(ok) else float(s_sorted[ok[-1]])


def choose_thresholds(scores: np.ndarray, targets: np.ndarray, rule: str = "f1",
                      target_precision: Optional[float] = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-class thresholds on val: best F1 (`rule` "f1"), or the lowest reaching `target_precision` (a class
    that can't reach it gets 1.0: never on). Returns ((C,) thresholds, {rule, target_precision, unreachable})."""
    scores, targets = _check(scores, targets)
    out, unreachable = np.empty(scores.shape[1]), []
    for j in range(scores.shape[1]):
        if target_precision is not None:
            th = precision_threshold(scores[:, j], targets[:, j], target_precision)
            if th is None:
                unreachable.append(j)
            out[j] = 1.0 if th is None else th
        else:
            out[j] = best_f1_threshold(scores[:, j], targets[:, j])[0]
    rule = "target_precision" if target_precision is not None else rule
    return out, {"rule": rule, "target_precision": target_precision, "unreachable": unreachable}


def best_global_threshold(scores: np.ndarray, targets: np.ndarray,
                          grid: Sequence[float] = tuple(np.linspace(0.02, 0.98, 49))) -> tuple[float, float]:
    """(threshold, macro-F1): the single threshold for all classes that maximises macro-F1 on (scores, targets)."""
    best = max(grid, key=lambda th: (f1_scores(decide(scores, th), targets)["macro_f1"], -abs(th - 0.5)))
    return float(best), f1_scores(decide(scores, best), targets)["macro_f1"]


def binary_ece(scores: np.ndarray, targets: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """(C,) expected calibration error per class: sum over bins of share x |positive rate - mean score|."""
    scores, targets = _check(scores, targets)
    out = np.empty(scores.shape[1])
    for j in range(scores.shape[1]):
        p, y = scores[:, j], targets[:, j]
        idx = np.clip(np.ceil(p * n_bins).astype(int) - 1, 0, n_bins - 1)
        count = np.bincount(idx, minlength=n_bins)
        gap = np.abs(np.bincount(idx, weights=y, minlength=n_bins) - np.bincount(idx, weights=p, minlength=n_bins))
        out[j] = gap.sum() / max(count.sum(), 1)
    return out


def evaluate_multilabel(scores: np.ndarray, targets: np.ndarray, classes: Sequence[str],
                        thresholds=0.5) -> dict[str, Any]:
    """The metrics of one split: mAP (macro over classes with positives), micro/macro F1 at `thresholds`,
    mean ECE, and per class {ap, f1, threshold, ece, n_positive}. JSON-ready (floats, None for NaN)."""
    scores, targets = _check(scores, targets)
    if len(scores) == 0:
        return {"n": 0, "mAP": None, "micro_f1": None, "macro_f1": None, "ece": None, "per_class": {}}
    ap, th = average_precision(scores, targets), as_thresholds(thresholds, len(classes))
    f1, ece = f1_scores(decide(scores, th), targets), binary_ece(scores, targets)
    per = {c: {"ap": _num(ap[j]), "f1": float(f1["per_class"][j]), "precision": float(f1["precision"][j]),
               "recall": float(f1["recall"][j]), "threshold": float(th[j]),
               "ece": float(ece[j]), "n_positive": int(targets[:, j].sum())} for j, c in enumerate(classes)}
    return {"n": int(len(scores)), "mAP": _num(np.nanmean(ap)) if np.isfinite(ap).any() else None,
            "micro_f1": f1["micro_f1"], "macro_f1": f1["macro_f1"], "ece": float(ece.mean()), "per_class": per}


def _num(v: float) -> Optional[float]:
    return None if v is None or not np.isfinite(v) else float(v)
