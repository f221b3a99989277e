"""Classification metrics over predicted probabilities (scikit-learn), and their CSV forms."""
from __future__ import annotations

import csv
import io
from typing import Any, Sequence

import numpy as np


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
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["true\\predicted", *classes])
    for c, row in zip(classes, cm):
        w.writerow([c, *[int(v) for v in row]])
    return buf.getvalue()


def per_class_csv(m: dict[str, Any]) -> str:
    """The per-class report of an `evaluate` result as CSV: label,precision,recall,f1,support."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "precision", "recall", "f1", "support"])
    for c, v in m["per_class"].items():
        w.writerow([c, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1']:.4f}", v["support"]])
    return buf.getvalue()


def _predictions_csv(paths, labels, classes, proba: np.ndarray, zs_proba) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "predicted", "score", "zeroshot_predicted", "zeroshot_score"])
    for i, (p, lb) in enumerate(zip(paths, labels)):
        j = int(proba[i].argmax())
        zs = ["", ""] if zs_proba is None else [classes[int(zs_proba[i].argmax())], f"{zs_proba[i].max():.6f}"]
        w.writerow([p, lb, classes[j], f"{proba[i, j]:.6f}", *zs])
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


def write_report(result, test_paths, test_labels, proba: np.ndarray, zs_proba) -> None:
    """Fill `result.report_dir`: report.json, confusion_matrix.csv/.png, zeroshot_confusion_matrix.csv/.png,
    per_class.csv, sweep.png, reliability.png (calibration before/after) and predictions.csv (one row per
    test image; scores calibrated)."""
    import json
    from pathlib import Path

    from toolkit import fsio
    from toolkit.evaluation import plots

    out = Path(result.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = result.head.classes_
    test, zs = result.metrics["test"], result.metrics.get("zeroshot_test")
    fsio.write_text(out / "confusion_matrix.csv", confusion_csv(test["confusion_matrix"], classes))
    fsio.write_text(out / "per_class.csv", per_class_csv(test))
    fsio.write_text(out / "predictions.csv", _predictions_csv(test_paths, test_labels, classes, proba, zs_proba))
    method = result.params.get("method", "probe")
    acc = f"{100 * test['accuracy']:.1f}%" if test["accuracy"] is not None else "n/a"
    plots.confusion_matrix_png(test["confusion_matrix"], classes, out / "confusion_matrix.png",
                               f"probe ({method}) on test: accuracy {acc}")
    if zs:
        fsio.write_text(out / "zeroshot_confusion_matrix.csv", confusion_csv(zs["confusion_matrix"], classes))
        zacc = f"{100 * zs['accuracy']:.1f}%" if zs["accuracy"] is not None else "n/a"
        plots.confusion_matrix_png(zs["confusion_matrix"], classes, out / "zeroshot_confusion_matrix.png",
                                   f"zero-shot on test: accuracy {zacc}")
    if result.sweep:
        param = result.sweep[0]["param"]
        plots.sweep_png(result.sweep, out / "sweep.png", f"{method}: validation accuracy over {param}",
                        chosen=result.params.get(param))
    panels = reliability_panels({f"probe ({method})": (result.metrics.get("calibration") or {}).get("probe"),
                                 "zero-shot": (result.metrics.get("calibration") or {}).get("zeroshot")})
    if panels:
        plots.reliability_png(panels, out / "reliability.png", "calibration on test, before and after "
                              "temperature scaling (fitted on val)")
    doc = {"metrics": result.metrics, "params": result.params, "sweep": result.sweep, "config": result.config,
           "store": result.store_path, "timings": result.timings, "classes": classes,
           "identity": result.head.identity.to_dict() if result.head.identity is not None else None}
    fsio.write_text(out / "report.json", json.dumps(doc, indent=2, default=str))
