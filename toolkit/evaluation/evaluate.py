"""How good is a head on a labelled split, how sure can we be, and what did it get wrong.

`evaluate_predictions` scores (n, C) probabilities against true labels with 95% confidence intervals: Wilson's
score interval for proportions (accuracy, per-class recall, coverage and precision of the accepted images under
a "none of these" threshold) and a seeded percentile bootstrap for balanced accuracy and macro-F1 (which are not
proportions). `size_warnings` says when a split is too small to trust; `mistakes` lists the errors, the most
confident first. numpy only: the CLI (`clipkit evaluate`) and scripts call these on any head's output.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
N_BOOT = 1000  # bootstrap resamples: the interval's ends move by ~0.5 points between seeds at n = 60
MIN_SPLIT = 100  # below this many images a split's accuracy interval is wider than +-10 points
MIN_PER_CLASS = 10  # below this many images of a class its recall moves 10 points per image


def wilson(k: int, n: int, z: float = Z95) -> tuple[Optional[float], Optional[float]]:
    """Wilson's score interval for k successes in n trials: (low, high) in [0, 1]; (None, None) when n = 0.
    Unlike the normal interval it stays inside [0, 1] and is not zero-width at 0 or n successes."""
    if n <= 0:
        return None, None
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _confusions(y: np.ndarray, pred: np.ndarray, n_classes: int, samples: np.ndarray) -> np.ndarray:
    """(B, C, C) confusion matrices of the resampled index rows `samples` (B, n): rows true, columns predicted."""
    codes = y[samples] * n_classes + pred[samples]
    offset = np.arange(len(samples))[:, None] * n_classes * n_classes
    counts = np.bincount((codes + offset).ravel(), minlength=len(samples) * n_classes * n_classes)
    return counts.reshape(len(samples), n_classes, n_classes)


def _balanced_accuracy(cm: np.ndarray) -> np.ndarray:
    """(..., C, C) confusions -> (...) mean recall over the classes present (as scikit-learn's)."""
    support = cm.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diagonal(cm, axis1=-2, axis2=-1) / support
    present = support > 0
    return np.where(present, np.nan_to_num(recall), 0).sum(-1) / np.maximum(present.sum(-1), 1)


def _macro_f1(cm: np.ndarray) -> np.ndarray:
    """(..., C, C) confusions -> (...) mean F1 over the classes present in the true labels."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support, predicted = cm.sum(-1), cm.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * tp / (support + predicted))
    present = support > 0
    return np.where(present, f1, 0).sum(-1) / np.maximum(present.sum(-1), 1)


def bootstrap(y: np.ndarray, pred: np.ndarray, n_classes: int, n_boot: int = N_BOOT, seed: int = 0
              ) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap 95% intervals of balanced accuracy and macro-F1: {name: (low, high)}."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(y), size=(n_boot, len(y)))
    cms = _confusions(y, pred, n_classes, samples)
    out = {}
    for name, fn in (("balanced_accuracy", _balanced_accuracy), ("macro_f1", _macro_f1)):
        lo, hi = np.percentile(fn(cms), [2.5, 97.5])
        out[name] = (float(lo), float(hi))
    return out


def _with_ci(value: Optional[float], ci: tuple[Optional[float], Optional[float]]) -> dict[str, Any]:
    return {"value": value, "low": ci[0], "high": ci[1]}


def evaluate_predictions(y_true: Sequence[str], proba: np.ndarray, classes: Sequence[str],
                         reject_below: Optional[float] = None, n_boot: int = N_BOOT, seed: int = 0,
                         split: str = "test") -> dict[str, Any]:
    """Score (n, C) probabilities (columns in `classes` order) against true labels, with 95% intervals.

    Returns {split, n, classes, accuracy, balanced_accuracy, macro_f1 ({value, low, high} each), per_class
    {label: {recall: {value, low, high}, support}}, confusion_matrix (C, C) rows true / columns predicted,
    selective (with a threshold: {threshold, coverage, precision} with intervals), warnings [str]}."""
    classes = list(classes)
    pos = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in y_true if v not in pos})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the head's classes {classes}")
    y = np.asarray([pos[v] for v in y_true], np.int64)
    proba = np.asarray(proba, np.float64)
    n, n_classes = len(y), len(classes)
    pred = proba.argmax(axis=1) if n else np.zeros(0, np.int64)
    cm = _confusions(y, pred, n_classes, np.arange(n)[None])[0] if n else np.zeros((n_classes, n_classes), int)
    correct = int((pred == y).sum())
    ci = bootstrap(y, pred, n_classes, n_boot, seed) if n else {"balanced_accuracy": (None, None),
                                                                 "macro_f1": (None, None)}
    support = cm.sum(1)
    out: dict[str, Any] = {
        "split": split, "n": int(n), "classes": classes,
        "accuracy": _with_ci(correct / n if n else None, wilson(correct, n)),
        "balanced_accuracy": _with_ci(float(_balanced_accuracy(cm)) if n else None, ci["balanced_accuracy"]),
        "macro_f1": _with_ci(float(_macro_f1(cm)) if n else None, ci["macro_f1"]),
        "per_class": {c: {"recall": _with_ci(int(cm[i, i]) / int(support[i]) if support[i] else None,
                                             wilson(int(cm[i, i]), int(support[i]))),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
    }
    if reject_below and n:
        keep = proba.max(axis=1) >= reject_below
        kept, right = int(keep.sum()), int((pred == y)[keep].sum())
        out["selective"] = {"threshold": float(reject_below),
                            "coverage": _with_ci(kept / n, wilson(kept, n)),
                            "precision": _with_ci(right / kept if kept else None, wilson(right, kept))}
    out["warnings"] = size_warnings(n, {c: int(s) for c, s in zip(classes, support)}, split,
                                    out["accuracy"])
    return out


def size_warnings(n: int, per_class: dict[str, int], split: str,
                  accuracy: Optional[dict[str, Any]] = None) -> list[str]:
    """Lines saying when a split is too small to trust: fewer than MIN_SPLIT images in all, or fewer than
    MIN_PER_CLASS of some class present in the classes (0 counts: a class the split doesn't hold)."""
    lines = []
    if n < MIN_SPLIT:
        width = ""
        if accuracy and accuracy.get("low") is not None:
            width = (f" (accuracy {100 * accuracy['value']:.1f}%, 95% interval {100 * accuracy['low']:.1f}-"
                     f"{100 * accuracy['high']:.1f}%)")
        lines.append(f"the {split} split has only {n} images{width}: too small to tell heads apart by a few "
                     f"points; even {MIN_SPLIT} images leave an interval of up to +-10 points")
    small = {c: k for c, k in per_class.items() if k < MIN_PER_CLASS}
    if small:
        names = ", ".join(f"'{c}' {k}" for c, k in sorted(small.items(), key=lambda kv: kv[1])[:5])
        more = f" and {len(small) - 5} more" if len(small) > 5 else ""
        lines.append(f"{len(small)} classes have fewer than {MIN_PER_CLASS} {split} images ({names}{more}): "
                     "their recall moves 10+ points per image")
    return lines


def mistakes(paths: Sequence[str], y_true: Sequence[str], proba: np.ndarray, classes: Sequence[str],
             reject_below: Optional[float] = None) -> list[dict[str, Any]]:
    """The images the head got wrong (or rejected, under a threshold), most confident first:
    [{path, true, predicted, score, true_score, rejected}]."""
    proba = np.asarray(proba, np.float64)
    pos = {c: i for i, c in enumerate(classes)}
    rows = []
    for path, truth, p in zip(paths, y_true, proba):
        best = int(p.argmax())
        rejected = bool(reject_below) and float(p[best]) < reject_below
        if classes[best] != truth or rejected:
            rows.append({"path": str(path), "true": truth, "predicted": classes[best], "score": float(p[best]),
                         "true_score": float(p[pos[truth]]), "rejected": rejected})
    rows.sort(key=lambda r: (r["rejected"], -r["score"]))  # confident mistakes first, then rejections
    return rows


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The text table `clipkit evaluate` prints: headline metrics with their intervals, per-class recall."""
    def pct(m: dict[str, Any]) -> str:
        if m["value"] is None:
            return "n/a"
        return f"{100 * m['value']:5.1f}%  [{100 * m['low']:5.1f}, {100 * m['high']:5.1f}]"

    lines = [f"{result['split']} split: {result['n']} images, {len(result['classes'])} classes "
             "(95% intervals: Wilson for proportions, bootstrap for balanced accuracy and macro-F1)"]
    for key, name in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced acc."), ("macro_f1", "macro-F1")):
        lines.append(f"  {name:<16}{pct(result[key])}")
    sel = result.get("selective")
    if sel:
        lines.append(f"  {'kept (>= ' + format(sel['threshold'], '.3f') + ')':<16}{pct(sel['coverage'])}")
        lines.append(f"  {'precision kept':<16}{pct(sel['precision'])}")
    width = max([len(c) for c in result["classes"]] + [5])
    lines.append(f"  {'class':<{width}}  {'n':>4}  recall")
    for c, m in result["per_class"].items():
        lines.append(f"  {c:<{width}}  {m['support']:>4}  {pct(m['recall'])}")
    return lines
