"""A multi-label head scored on one split of a multi-label feature store: for `eval-prompts` (a zero-shot head
per prompt set, calibrated and thresholded per class on val first) and `evaluate` (a saved head, as saved).

Metrics are toolkit.evaluation.multilabel's: mAP (macro over classes with a positive), micro and macro F1 at
the head's per-class thresholds, per-class AP, F1, precision, recall, threshold and ECE.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from toolkit import fsio
from toolkit.errors import ConfigError
from toolkit.heads.multilabel import MultiLabelHead


@dataclass
class MultiLabelEval:
    """A multi-label head on one split: `proba` (n, C) independent probabilities in `classes` order, `targets`
    (n, C) 0/1, `metrics` evaluate_multilabel's dict."""

    multi_label = True

    head: MultiLabelHead
    split: str
    classes: list[str]
    paths: list[str]
    targets: np.ndarray
    proba: np.ndarray
    thresholds: np.ndarray  # (C,) in `classes` order
    metrics: dict[str, Any] = field(default_factory=dict)
    prompt_set: Any = None  # eval-prompts: the PromptSet the zero-shot head came from
    val_map: Optional[float] = None  # eval-prompts: the head's val mAP (which set --save-head keeps)

    def scalar_metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow and `compare`: map, micro_f1, macro_f1, ece under plain names and with the
        split as prefix, ap/<class> and threshold/<class>."""
        out: dict[str, float] = {}
        for k in ("mAP", "micro_f1", "macro_f1", "ece"):
            if self.metrics.get(k) is not None:
                out[k.lower()] = out[f"{self.split}_{k.lower()}"] = float(self.metrics[k])
        for c, row in (self.metrics.get("per_class") or {}).items():
            if row.get("ap") is not None:
                out[f"ap/{c}"] = float(row["ap"])
        out.update({f"threshold/{c}": float(t) for c, t in zip(self.classes, self.thresholds)})
        return out

    def predictions_csv(self) -> str:
        """path, labels (true, '|'-joined), predicted ('|'-joined), then every class's probability."""
        buf = io.StringIO()
        w = fsio.csv_writer(buf)
        w.writerow(["path", "labels", "predicted", *self.classes])
        for p, y, on, s in zip(self.paths, self.targets, self.proba >= self.thresholds, self.proba):
            w.writerow([p, "|".join(c for c, v in zip(self.classes, y) if v),
                        "|".join(c for c, v in zip(self.classes, on) if v), *(f"{v:.6f}" for v in s)])
        return buf.getvalue()


def split_rows(store, split: str) -> np.ndarray:
    """The store rows of `split` ("all": every row); ConfigError when it has none."""
    rows = np.arange(len(store)) if split == "all" else store.split_indices(split)
    if len(rows) == 0:
        raise ConfigError(f"the feature store '{store.path}' has no {split} rows; pick another split "
                          "(train, val, test or all)", field="split")
    return np.asarray(rows)


def check_head_classes(head, classes: list[str]) -> None:
    """ConfigError unless `head` is multi-label with the store's classes (in any order)."""
    if not getattr(head, "multi_label", False):
        raise ConfigError("the head is single-label (one class per image), but the data is multi-label; "
                          "train a multi-label head on it with train-probe", field="head")
    missing = sorted(set(classes) - set(head.classes_))
    if missing:
        raise ConfigError(f"the data has labels the head doesn't know ({', '.join(map(repr, missing[:5]))}); "
                          f"the head's labels are {head.classes_}", field="head")


def score_head(head: MultiLabelHead, store, split: str, prompt_set: Any = None) -> MultiLabelEval:
    """A (finished) multi-label head scored on `split` of a multi-label store (see `score_features`)."""
    from toolkit.data.multilabel import store_targets

    rows = split_rows(store, split)
    return score_features(head, np.asarray(store.features[rows], np.float32), store_targets(store, rows),
                          list(store.classes), [str(store.paths[i]) for i in rows], split, prompt_set)


def score_features(head: MultiLabelHead, features: np.ndarray, targets: np.ndarray, classes: list[str],
                   paths: list[str], split: str, prompt_set: Any = None) -> MultiLabelEval:
    """A multi-label head on (n, D) features with (n, C) 0/1 targets over `classes`, at the head's thresholds.
    The head may know more classes, in another order: columns follow `classes`."""
    from toolkit.evaluation.multilabel import evaluate_multilabel

    check_head_classes(head, classes)
    cols = [head.classes_.index(c) for c in classes]
    proba = head.predict_proba(features)[:, cols]
    thresholds = head.thresholds_[cols]
    metrics = evaluate_multilabel(proba, targets, classes, thresholds)
    return MultiLabelEval(head, split, classes, list(paths), np.asarray(targets), proba, thresholds, metrics,
                          prompt_set)


def score_prompts(zeroshot: MultiLabelHead, store, split: str, calibration: str = "platt",
                  target_precision: Optional[float] = None, prompt_set: Any = None) -> MultiLabelEval:
    """A multi-label zero-shot head (classes = the store's) calibrated and thresholded per class on the store's
    val rows (fitting.multilabel.finish_head; thresholds 0.5 and no calibration without labelled val), then
    scored on `split`."""
    from toolkit.data.multilabel import store_targets
    from toolkit.fitting.multilabel import finish_head

    from toolkit.evaluation.multilabel import average_precision

    val, val_map = store.split_indices("val"), None
    if len(val):
        Y_val = store_targets(store, val)
        z = zeroshot.decision_function(np.asarray(store.features[val], np.float32))
        zeroshot = finish_head(zeroshot, z, Y_val, calibration, target_precision)
        ap = average_precision(z, Y_val)
        val_map = float(np.nanmean(ap)) if np.isfinite(ap).any() else None
    ev = score_head(zeroshot, store, split, prompt_set)
    ev.val_map = val_map
    return ev
