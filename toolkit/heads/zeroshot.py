"""ZeroShotHead: class embeddings from labels x prompt templates, scored by cosine similarity.

As open_clip's build_zero_shot_classifier: encode every (label, template) prompt, average the normalized
embeddings per label, renormalize. Probabilities are softmax(logit_scale * features @ W) over labels.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from toolkit.errors import ConfigError
from toolkit.heads.base import SavedHead
from toolkit.heads.prompts import check_prompts_fit, expand, validate_labels, validate_templates


def build_class_weights(extractor, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(C, D) float32 class embeddings, rows L2-normalized: the mean template embedding per label."""
    check_prompts_fit(getattr(extractor, "tokenizer", None), labels, templates)  # no silent cut at the context
    prompts = expand(labels, templates)
    emb = extractor.encode_texts(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def baseline_head(extractor, classes: Sequence[str], prompts, labels_given: bool = False) -> "ZeroShotHead":
    """The zero-shot baseline a trained head is compared with: prompted with the dataset's class names and the
    templates of `prompts` (a PromptConfig). Labels given besides (`labels_given`) must be those class names."""
    from toolkit.heads.prompts import resolve_labels, resolve_templates

    if labels_given and sorted(resolve_labels(prompts)) != sorted(classes):
        raise ConfigError(f"{{field}} {resolve_labels(prompts)} differ from the dataset's classes {list(classes)}; "
                          "the zero-shot baseline prompts with the class names, so leave the labels out",
                          field="labels")
    return ZeroShotHead.from_extractor(extractor, classes, resolve_templates(prompts))


class ZeroShotHead(SavedHead):
    """A head with the scikit-learn classifier contract: `classes_`, `coef_` (C, D), `predict_proba`.

    Saved (`clipkit eval-prompts --save-head`) with its calibration, it serves like any other head."""

    kind, type, default_method = "zeroshot", "zeroshot", "zeroshot"

    def __init__(self, labels: Sequence[str], templates: Sequence[str], coef: np.ndarray, logit_scale: float,
                 identity=None, method: Optional[str] = None, params=None, metrics=None, **calibration: Any):
        super().__init__(labels, identity, method, params, metrics, **calibration)
        self.templates = list(templates)
        self.coef_ = np.asarray(coef, np.float32)
        self.logit_scale = float(logit_scale)
        if self.coef_.ndim != 2 or self.coef_.shape[0] != len(self.classes_):
            raise ValueError(f"coef has shape {self.coef_.shape} for {len(self.classes_)} labels")

    @classmethod
    def from_extractor(cls, extractor, labels: Sequence[str], templates: Sequence[str]) -> "ZeroShotHead":
        labels = validate_labels(labels, "the label list")
        templates = validate_templates(templates, "the template list")
        if len(labels) < 2:
            raise ConfigError(f"zero-shot needs at least two labels, got {labels!r}; add at least one more label")
        return cls(labels, templates, build_class_weights(extractor, labels, templates), extractor.logit_scale,
                   extractor.identity)

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """(n, D) L2-normalized features -> (n, C) logits = logit_scale * cosine similarity."""
        return self.logit_scale * (np.asarray(features, np.float32) @ self.coef_.T)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "templates": self.templates, "n_templates": len(self.templates),
                "logit_scale": self.logit_scale}

    def tensors(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_}

    def header(self) -> dict[str, Any]:
        return {"templates": self.templates, "logit_scale": self.logit_scale, "embed_dim": int(self.coef_.shape[1])}

    @classmethod
    def from_saved(cls, doc: dict[str, Any], tensors: dict[str, np.ndarray], identity) -> "ZeroShotHead":
        return cls(doc["classes"], doc["templates"], tensors["coef"], doc["logit_scale"],
                   **cls.saved_common(doc, identity))

    def in_order(self, classes: Sequence[str]) -> "ZeroShotHead":
        """This head with its rows in `classes` order (the same labels, templates and logit scale; a new,
        uncalibrated head)."""
        order = [self.classes_.index(c) for c in classes]
        return ZeroShotHead(list(classes), self.templates, self.coef_[order], self.logit_scale, self.identity)
