"""Classification metrics over predicted probabilities (scikit-learn), and their CSV forms."""
from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

from toolkit import fsio


def evaluate(y_true: Sequence[str], proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Score (n, C) probabilities (columns in `classes` order) against true labels.

    Returns accuracy, balanced_accuracy (mean recall over the classes present in y_true), macro_f1,
    n, per_class {label: {precision, recall, f1, support}}, and confusion_matrix (C, C) as nested lists,
    rows = true class, columns = predicted class, both in `classes` order.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, \
        recall_score

    classes = list(classes)
    pos = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(y) for y in y_true if y not in pos})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    y = np.asarray([pos[v] for v in y_true], dtype=np.int64)
    if len(y) == 0:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None, "macro_f1": None, "per_class": {},
                "confusion_matrix": np.zeros((len(classes), len(classes)), int).tolist(), "classes": classes}
    pred = np.asarray(proba).argmax(axis=1)
    present = sorted(set(y.tolist()))
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(recall_score(y, pred, labels=present, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "classes": classes,
    }


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """The scalar part of an `evaluate` result (what goes into a head's JSON and MLflow metrics)."""
    return {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1") if k in m}


def confusion_csv(cm: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """A confusion matrix as CSV: header 'true\\predicted,<classes...>', one row per true class."""
    buf = io.StringIO()
    w = fsio.csv_writer(buf)
    w.writerow(["true\\predicted", *classes])
    for c, row in zip(classes, cm):
        w.writerow([c, *[int(v) for v in row]])
    return buf.getvalue()


def per_class_csv(m: dict[str, Any]) -> str:
    """The per-class report of an `evaluate` result as CSV: label,precision,recall,f1,support."""
    buf = io.StringIO()
    w = fsio.csv_writer(buf)
    w.writerow(["label", "precision", "recall", "f1", "support"])
    for c, v in m["per_class"].items():
        w.writerow([c, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1']:.4f}", v["support"]])
    return buf.getvalue()


def reliability_panels(heads: dict[str, Any], split: str = "test") -> list[dict[str, Any]]:
    """plots.reliability_png panels, before and after, from {name: calibration.calibrate_head report}."""
    panels = []
    for name, cal in heads.items():
        part = (cal or {}).get(split) or {}
        for when, what in (("before", "T = 1"), ("after", f"T = {(cal or {}).get('temperature', 1):.3g}")):
            m = part.get(when) or {}
            if m.get("reliability"):
                panels.append({"title": f"{name}, {what} ({m['n']} {split} images)",
                               "reliability": m["reliability"], "ece": m.get("ece")})
    return panels
