"""Training a multi-label head on a multi-label feature store (`train_multilabel`): few-shot draws, the fit
(one-vs-rest logreg or its blend with zero-shot), per-class calibration and thresholds on val, scores of the
head and of the zero-shot head on test (at their own val-chosen thresholds, and at the best single global
threshold for comparison), and report.json.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from toolkit.errors import ConfigError, DataError
from toolkit.heads.multilabel import MultiLabelHead

METHODS = ("logreg", "blend", "cache", "zeroshot")  # train-probe's --method values with a multi-label form


@dataclass
class MultiLabelResult:
    """One multi-label training run (the shape of fitting.probe.ProbeResult, so tracking logs it alike)."""

    head: MultiLabelHead
    metrics: dict[str, Any]  # val, test, zeroshot_test (evaluate_multilabel dicts), gain_over_zeroshot (mAP points)
    sweep: list[dict[str, Any]]
    report_dir: Optional[Path]
    params: dict[str, Any]
    config: dict[str, Any]
    store_path: Optional[str] = None
    timings: dict[str, float] = field(default_factory=dict)

    def scalar_metrics(self) -> dict[str, float]:
        """Flat numbers: {val,test,zeroshot_test}_{map,micro_f1,macro_f1,ece}, gain_over_zeroshot, and the test
        numbers under plain names (map, micro_f1) so `clipkit compare --metric map` ranks runs."""
        out: dict[str, float] = {}
        for part in ("val", "test", "zeroshot_test"):
            for k in ("mAP", "micro_f1", "macro_f1", "ece"):
                v = (self.metrics.get(part) or {}).get(k)
                if v is not None:
                    out[f"{part}_{k.lower()}"] = float(v)
        for k in ("map", "micro_f1"):
            if f"test_{k}" in out:
                out[k] = out[f"test_{k}"]
        if self.metrics.get("gain_over_zeroshot") is not None:
            out["gain_over_zeroshot"] = float(self.metrics["gain_over_zeroshot"])
        return out


def fewshot_rows(train_idx: np.ndarray, Y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Up to K training rows per class (rows carrying it, drawn with `seed`), their union, sorted."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(train_idx[Y[train_idx, j] > 0])[:k] for j in range(Y.shape[1])]
    return np.unique(np.concatenate(picked))


def _estimator(method: str, c_grid: Optional[Sequence[float]], per_class_c: bool):
    from toolkit.fitting.multilabel import DEFAULT_GRID, MultiLabelBlend, OneVsRestLogReg

    if method == "logreg":  # re-centred features: the blends below mix weights over the raw ones
        return OneVsRestLogReg(c_grid or DEFAULT_GRID, per_class_c, center=True)
    base = OneVsRestLogReg(c_grid or DEFAULT_GRID, per_class_c)
    if method == "blend":
        return MultiLabelBlend(base)
    if method == "cache":  # Tip-Adapter-style votes of the training images over the zero-shot scores
        from toolkit.fitting.multilabel_cache import MultiLabelCache

        return MultiLabelCache()
    raise ConfigError(f"method '{method}' has no multi-label form yet; use one of {', '.join(METHODS)}",
                      field="method")


def fit_multilabel(method: str, data: dict, classes: list[str], zeroshot=None, identity=None,
                   c_grid=None, per_class_c: bool = False, calibration: str = "platt",
                   target_precision: Optional[float] = None):
    """(head with calibration and thresholds chosen on val, MultiLabelFit) for `method` on data[split] = (X, Y)."""
    from toolkit.fitting.multilabel import MultiLabelFit, finish_head

    (X, Y), (X_val, Y_val) = data["train"], data["val"]
    if method == "zeroshot":
        if zeroshot is None:
            raise ConfigError("method zeroshot needs prompts for the class names", field="method")
        fit = MultiLabelFit(zeroshot, {}, [], zeroshot.decision_function(X_val))
    else:
        est = _estimator(method, c_grid, per_class_c)
        est.fit(X, Y, X_val, Y_val, classes, zeroshot=zeroshot, identity=identity)
        fit = est.result_
    return finish_head(fit.head, fit.val_logits, Y_val, calibration, target_precision), fit


def _split_data(store, fewshot: Optional[int], seed: int):
    from toolkit.data.multilabel import store_targets

    Y = store_targets(store)
    idx = {s: store.split_indices(s) for s in ("train", "val", "test")}
    if fewshot:
        idx["train"] = fewshot_rows(idx["train"], Y, fewshot, seed)
    if len(idx["val"]) == 0:
        raise DataError(f"store '{store.path}' has no validation rows; thresholds are chosen on val: give a val "
                        "split or let clipkit draw one")
    return {s: (np.asarray(store.features[i], np.float32), Y[i]) for s, i in idx.items()}, idx


def train_multilabel(store, method: str = "logreg", zeroshot=None, fewshot: Optional[int] = None, seed: int = 0,
                     c_grid: Optional[Sequence[float]] = None, per_class_c: bool = False, calibration: str = "platt",
                     target_precision: Optional[float] = None, report_dir: Optional[str | Path] = None,
                     config: Optional[dict[str, Any]] = None) -> MultiLabelResult:
    """Fit a multi-label head on a multi-label store's train split (C, calibration and thresholds on val), score
    it and the zero-shot head on test, and write report.json into `report_dir` (when given)."""
    from toolkit.evaluation.multilabel import best_global_threshold, evaluate_multilabel

    classes = store.classes
    data, idx = _split_data(store, fewshot, seed)
    zs = zeroshot.in_order(classes) if zeroshot is not None and hasattr(zeroshot, "in_order") else zeroshot
    t0 = time.perf_counter()
    head, fit = fit_multilabel(method, data, classes, zs, store.identity, c_grid, per_class_c, calibration,
                               target_precision)
    fit_s = time.perf_counter() - t0
    (X_val, Y_val), (X_test, Y_test) = data["val"], data["test"]
    val_p = head.predict_proba(X_val)
    metrics = {"val": evaluate_multilabel(val_p, Y_val, classes, head.thresholds_),
               "test": evaluate_multilabel(head.predict_proba(X_test), Y_test, classes, head.thresholds_)}
    g, _ = best_global_threshold(val_p, Y_val)
    metrics["test_global_threshold"] = {"threshold": g, **_short(evaluate_multilabel(head.predict_proba(X_test),
                                                                                    Y_test, classes, g))}
    gain = None
    if zs is not None and method != "zeroshot":
        from toolkit.fitting.multilabel import finish_head

        zs_head = finish_head(zs, zs.decision_function(X_val), Y_val, calibration, target_precision)
        metrics["zeroshot_test"] = evaluate_multilabel(zs_head.predict_proba(X_test), Y_test, classes,
                                                       zs_head.thresholds_)
        if metrics["zeroshot_test"]["mAP"] is not None and metrics["test"]["mAP"] is not None:
            gain = 100 * (metrics["test"]["mAP"] - metrics["zeroshot_test"]["mAP"])
    metrics["gain_over_zeroshot"] = gain
    params = {"method": method, "multi_label": True, "seed": seed, "fewshot": fewshot, "calibration": calibration,
              "target_precision": target_precision, **fit.params, **{f"n_{s}": int(len(i)) for s, i in idx.items()}}
    head = head.annotated(params=params)
    result = MultiLabelResult(head, metrics, fit.sweep, Path(report_dir) if report_dir else None, params,
                              dict(config or {}), str(store.path), {"fit_s": round(fit_s, 3)})
    result.head = head.annotated(metrics={**result.scalar_metrics(), "n_test": int(len(Y_test))})
    if report_dir:
        write_report(result, store.paths[idx["test"]], head.predict_proba(X_test), Y_test)
    return result


def _short(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("mAP", "micro_f1", "macro_f1")}


def write_report(result: MultiLabelResult, paths: Sequence[str], proba: np.ndarray, Y: np.ndarray) -> None:
    """report.json (metrics, params, sweep, per-class thresholds) and predictions.csv (path, labels, predicted
    labels, every class's score) of the test split into `result.report_dir`."""
    import csv
    import io

    from toolkit import fsio

    out = Path(result.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = result.head.classes_
    doc = {"multi_label": True, "metrics": result.metrics, "params": result.params, "sweep": result.sweep,
           "config": result.config, "store": result.store_path, "timings": result.timings, "classes": classes,
           "thresholds": dict(zip(classes, result.head.thresholds_.tolist())),
           "identity": result.head.identity.to_dict() if result.head.identity is not None else None}
    fsio.write_text(out / "report.json", json.dumps(doc, indent=2, default=str))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "labels", "predicted", *classes])
    on = result.head.decide(proba)
    for p, y, row, s in zip(paths, Y, on, proba):
        w.writerow([p, "|".join(c for c, v in zip(classes, y) if v), "|".join(c for c, v in zip(classes, row) if v),
                    *(f"{v:.6f}" for v in s)])
    fsio.write_text(out / "predictions.csv", buf.getvalue())
