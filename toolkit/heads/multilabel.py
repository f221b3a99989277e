"""Multi-label heads: every class scored on its own (a sigmoid per class), with a threshold per class.

    MultiLabelLinearHead     one-vs-rest logistic regression (toolkit.fitting.multilabel), or a blend of it with
                             the zero-shot scores (a blend of two linear scorers is one linear scorer)
    MultiLabelZeroShotHead   a positive and a negative prompt per class ("a person holding a dumbbell" vs "a
                             person"); the two-way softmax at the model's logit scale is
                             sigmoid(logit_scale * (cos(x, positive) - cos(x, negative)))

All share `MultiLabelHead`: `decision_function((n, D)) -> (n, C)` logits, `predict_proba -> (n, C)`
independent probabilities sigmoid(calib_scale_ * logit + calib_bias_) (rows do not sum to 1), per-class
calibration (`calibration_method_`: "none", "temperature" (scale 1/T_c, bias 0) or "platt" (both fitted)), and
per-class `thresholds_` (a label is on where its probability reaches its threshold; 0.5 until chosen on val).
`predict` gives each image's list of labels (possibly empty). Heads are saved in the same folder format as
every head (heads.base.SavedHead); head.json says "multi_label": true.
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import numpy as np

from toolkit.heads.base import SavedHead
from toolkit.heads.linear import LinearWeights


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Element-wise logistic function, stable for large |z|."""
    z = np.asarray(z, np.float64)
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


class MultiLabelHead(SavedHead):
    """Base of the multi-label heads: per-class sigmoid, calibration and thresholds (see the module docstring)."""

    multi_label = True
    kind = "probe"  # fixed classes: the Predictor never re-prompts it for another label set

    def __init__(self, classes: Sequence[str], *, thresholds: Optional[np.ndarray] = None,
                 calib_scale: Optional[np.ndarray] = None, calib_bias: Optional[np.ndarray] = None,
                 calibration_method: str = "none", threshold_rule: Optional[dict[str, Any]] = None, **common: Any):
        super().__init__(classes, **common)
        n = len(self.classes_)
        self.thresholds_ = _vector(thresholds, 0.5, n, "thresholds")
        self.calib_scale_ = _vector(calib_scale, 1.0, n, "calib_scale")
        self.calib_bias_ = _vector(calib_bias, 0.0, n, "calib_bias")
        if not ((self.thresholds_ >= 0) & (self.thresholds_ <= 1)).all():
            raise ValueError(f"thresholds must be in [0, 1], got {self.thresholds_.tolist()}")
        if calibration_method not in ("none", "temperature", "platt"):
            raise ValueError(f"calibration_method must be none, temperature or platt, got {calibration_method!r}")
        self.calibration_method_ = calibration_method
        self.threshold_rule_ = dict(threshold_rule or {"rule": "default", "value": 0.5})

    # -- scoring
    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(n, D) features -> (n, C) independent calibrated probabilities, columns in `classes_` order."""
        return sigmoid(self.calib_scale_ * self.decision_function(features) + self.calib_bias_)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """(n, C) probabilities -> (n, C) bools: each class on where it reaches its threshold."""
        return np.asarray(proba) >= self.thresholds_

    def predict(self, features: np.ndarray) -> list[list[str]]:
        """Each image's labels above their thresholds (possibly none), in `classes_` order."""
        return [[c for c, on in zip(self.classes_, row) if on] for row in self.decide(self.predict_proba(features))]

    # -- new heads from this one
    def with_thresholds(self, thresholds: np.ndarray, rule: Optional[dict[str, Any]] = None) -> "MultiLabelHead":
        """This head with per-class thresholds (a copy; this head is unchanged)."""
        head = copy.copy(self)
        head.thresholds_ = _vector(thresholds, 0.5, len(self.classes_), "thresholds")
        head.threshold_rule_ = dict(rule or {})
        return head

    def with_calibration(self, method: str, scale: np.ndarray, bias: np.ndarray) -> "MultiLabelHead":
        """This head with per-class calibration p = sigmoid(scale * logit + bias) (a copy)."""
        head = copy.copy(self)
        n = len(self.classes_)
        head.calib_scale_, head.calib_bias_ = _vector(scale, 1.0, n, "scale"), _vector(bias, 0.0, n, "bias")
        head.calibration_method_ = method
        return head

    # -- description and persistence
    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "multi_label": True,
                "thresholds": dict(zip(self.classes_, self.thresholds_.tolist())),
                "threshold_rule": self.threshold_rule_, "class_calibration": self.calibration_method_}

    def multilabel_header(self) -> dict[str, Any]:
        """head.json fields (exact float64 lists, readable): thresholds and calibration per class."""
        return {"multi_label": True, "thresholds": self.thresholds_.tolist(), "threshold_rule": self.threshold_rule_,
                "class_calibration": {"method": self.calibration_method_, "scale": self.calib_scale_.tolist(),
                                      "bias": self.calib_bias_.tolist()}}

    @classmethod
    def saved_multilabel(cls, doc: dict[str, Any]) -> dict[str, Any]:
        cal = doc.get("class_calibration") or {}
        return {"thresholds": doc.get("thresholds"), "calib_scale": cal.get("scale"), "calib_bias": cal.get("bias"),
                "calibration_method": cal.get("method", "none"), "threshold_rule": doc.get("threshold_rule")}


def _vector(value, default: float, n: int, name: str) -> np.ndarray:
    v = np.full(n, default, np.float64) if value is None else np.asarray(value, np.float64).reshape(-1)
    if v.shape != (n,) or not np.isfinite(v).all():
        raise ValueError(f"{name} must hold {n} finite numbers (one per class), got shape {v.shape}")
    return v


class MultiLabelLinearHead(LinearWeights, MultiLabelHead):
    """sigmoid(calibration(g(features) @ coef_.T + intercept_)) per class: one-vs-rest logistic regression.

    g is the identity, or with `center` (D,) (the training features' mean, `center_`) the features re-centred
    and re-normalized: g(x) = (x - center) / ||x - center||. CLIP features share a large common direction;
    without it, the L2 penalty weighs on what tells the images apart (BENCHMARKS.md, "Multi-label")."""

    type, default_method = "multilabel-linear", "ovr-logreg"

    def __init__(self, classes: Sequence[str], coef: np.ndarray, intercept: Optional[np.ndarray] = None,
                 center: Optional[np.ndarray] = None, **kwargs: Any):
        super().__init__(classes, **kwargs)
        self._set_weights(coef, intercept)
        self.center_ = None if center is None else np.asarray(center, np.float32).reshape(-1)
        if self.center_ is not None and self.center_.shape != (self.coef_.shape[1],):
            raise ValueError(f"center {self.center_.shape} doesn't fit features of dimension {self.coef_.shape[1]}")

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """(n, D) L2-normalized features -> (n, C) logits (before the per-class calibration)."""
        return super().decision_function(recenter(features, self.center_))

    def tensors(self) -> dict[str, np.ndarray]:
        return {**super().tensors(), **({"center": self.center_} if self.center_ is not None else {})}

    def header(self) -> dict[str, Any]:
        return {"embed_dim": int(self.coef_.shape[1]), "centered": self.center_ is not None,
                **self.multilabel_header()}

    @classmethod
    def from_saved(cls, doc: dict[str, Any], tensors: dict[str, np.ndarray], identity) -> "MultiLabelLinearHead":
        return cls(doc["classes"], tensors["coef"], tensors["intercept"], tensors.get("center"),
                   **cls.saved_multilabel(doc), **cls.saved_common(doc, identity))


def recenter(features: np.ndarray, center: Optional[np.ndarray]) -> np.ndarray:
    """(n, D) features minus `center`, re-normalized to unit length (unchanged when `center` is None)."""
    x = np.asarray(features, np.float32)
    if center is None:
        return x
    x = x - center
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class MultiLabelZeroShotHead(MultiLabelHead):
    """Per class: logit_scale * (cos(x, positive prompt) - cos(x, negative prompt)); see the module docstring."""

    type, default_method = "multilabel-zeroshot", "zeroshot"

    def __init__(self, classes: Sequence[str], templates: Sequence[str], negatives: Sequence[str],
                 pos_coef: np.ndarray, neg_coef: np.ndarray, logit_scale: float, **kwargs: Any):
        super().__init__(classes, **kwargs)
        self.templates, self.negatives = list(templates), list(negatives)
        self.pos_coef_, self.neg_coef_ = np.asarray(pos_coef, np.float32), np.asarray(neg_coef, np.float32)
        self.logit_scale = float(logit_scale)
        n = len(self.classes_)
        if self.pos_coef_.shape != self.neg_coef_.shape or self.pos_coef_.shape[0] != n or len(self.negatives) != n:
            raise ValueError(f"positive {self.pos_coef_.shape} / negative {self.neg_coef_.shape} embeddings and "
                             f"{len(self.negatives)} negatives don't fit {n} classes")

    @classmethod
    def from_extractor(cls, extractor, classes: Sequence[str], templates: Sequence[str],
                       negatives: Optional[dict[str, str] | Sequence[str]] = None,
                       default_negative: str = "something else") -> "MultiLabelZeroShotHead":
        """Encode each class's positive prompt (the class name in every template) and its negative (from
        `negatives`, a {class: text} map or a list in class order; else `default_negative`)."""
        from toolkit.heads.prompts import validate_labels, validate_templates
        from toolkit.heads.zeroshot import build_class_weights

        classes = validate_labels(classes, "the label list")
        templates = validate_templates(templates, "the template list")
        negs = negative_prompts(classes, negatives, default_negative)
        pos = build_class_weights(extractor, classes, templates)
        neg = _weights_with_repeats(extractor, negs, templates)
        return cls(classes, templates, negs, pos, neg, extractor.logit_scale, identity=extractor.identity)

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """(n, D) L2-normalized features -> (n, C) logits of the positive over the negative prompt."""
        x = np.asarray(features, np.float32)
        return self.logit_scale * (x @ self.pos_coef_.T - x @ self.neg_coef_.T)

    def linear_form(self) -> tuple[np.ndarray, np.ndarray]:
        """(coef (C, D), intercept (C,)) with decision_function = features @ coef.T + intercept."""
        return self.logit_scale * (self.pos_coef_ - self.neg_coef_), np.zeros(len(self.classes_), np.float32)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "templates": self.templates, "logit_scale": self.logit_scale,
                "negatives": dict(zip(self.classes_, self.negatives))}

    def tensors(self) -> dict[str, np.ndarray]:
        return {"pos_coef": self.pos_coef_, "neg_coef": self.neg_coef_}

    def header(self) -> dict[str, Any]:
        return {"templates": self.templates, "negatives": self.negatives, "logit_scale": self.logit_scale,
                "embed_dim": int(self.pos_coef_.shape[1]), **self.multilabel_header()}

    @classmethod
    def from_saved(cls, doc: dict[str, Any], tensors: dict[str, np.ndarray], identity) -> "MultiLabelZeroShotHead":
        return cls(doc["classes"], doc["templates"], doc["negatives"], tensors["pos_coef"], tensors["neg_coef"],
                   doc["logit_scale"], **cls.saved_multilabel(doc), **cls.saved_common(doc, identity))


def negative_prompts(classes: Sequence[str], negatives, default: str) -> list[str]:
    """One negative text per class: from a {class: text} map (missing classes get `default`) or a list."""
    if negatives is None:
        return [default] * len(classes)
    if isinstance(negatives, dict):
        unknown = [k for k in negatives if k not in classes]
        if unknown:
            from toolkit.errors import ConfigError

            raise ConfigError(f"negative prompt given for unknown class '{unknown[0]}'; the classes are "
                              f"{list(classes)}: fix the name in the negatives")
        return [str(negatives.get(c) or default) for c in classes]
    negs = [str(n) for n in negatives]
    if len(negs) != len(classes):
        from toolkit.errors import ConfigError

        raise ConfigError(f"{len(negs)} negative prompts for {len(classes)} classes; give one per class")
    return negs


def _weights_with_repeats(extractor, texts: list[str], templates: Sequence[str]) -> np.ndarray:
    """build_class_weights for a list that may repeat a text (one shared negative): encode each text once."""
    from toolkit.heads.zeroshot import build_class_weights

    distinct = list(dict.fromkeys(texts))
    w = build_class_weights(extractor, distinct, templates)
    return w[[distinct.index(t) for t in texts]]
