"""Predictor(extractor, head): the one prediction path behind both the CLI and the server.

A head is anything with the scikit-learn classifier contract over features: `classes_`, `kind`, and
`predict_proba((n, D) features) -> (n, C)` with columns in `classes_` order.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from .config import Config
from .errors import ConfigError, HeadError
from .prompts import resolve_labels, resolve_templates, validate_labels


class Head(Protocol):
    kind: str
    classes_: list[str]

    def predict_proba(self, features: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


def check_head_matches(head, extractor) -> None:
    """Refuse a head whose features came from a different extractor."""
    ident = getattr(head, "identity", None)
    if ident is None:
        return
    reason = extractor.identity.mismatch(ident)
    if reason:
        raise HeadError(f"head was trained on features of {ident.label}, but the loaded model is "
                        f"{extractor.identity.label}: {reason}; load it with --model/--pretrained of its own model")


class Predictor:
    """Images or features in, per-image label + scores out."""

    def __init__(self, extractor, head: Head, max_label_sets: int = 64):
        check_head_matches(head, extractor)
        self.extractor, self.head = extractor, head
        self._heads: OrderedDict[tuple[str, ...], Head] = OrderedDict([(tuple(head.classes_), head)])
        self._max_label_sets = max_label_sets

    @property
    def mode(self) -> str:
        return self.head.kind

    @property
    def labels(self) -> list[str]:
        return list(self.head.classes_)

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "model": self.extractor.identity.model,
                "pretrained": self.extractor.identity.pretrained, "identity": self.extractor.identity.to_dict(),
                "labels": self.labels, "head": self.head.describe()}

    def head_for(self, labels: Optional[Sequence[str]] = None) -> Head:
        """The default head, or (zero-shot only) a head for another label set, cached per label set (LRU)."""
        if not labels:
            return self.head
        if self.mode != "zeroshot":
            raise ConfigError("custom labels only work in zero-shot mode; a probe head has fixed classes "
                              f"{self.head.classes_}")
        key = tuple(validate_labels(labels, "the request's labels"))
        if key in self._heads:
            self._heads.move_to_end(key)
            return self._heads[key]
        from .zeroshot import ZeroShotHead

        head = ZeroShotHead.from_extractor(self.extractor, key, self.head.templates)
        self._heads[key] = head
        while len(self._heads) > self._max_label_sets:
            self._heads.popitem(last=False)
        return head

    # -- scoring
    def predict_features(self, features: np.ndarray, top_k: Optional[int] = None,
                         labels: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
        """(n, D) features -> n dicts {label, score, scores, top_k}; scores ordered as the head's classes."""
        head = self.head_for(labels)
        probs = head.predict_proba(features) if len(features) else np.zeros((0, len(head.classes_)))
        return [_row(head.classes_, p, top_k) for p in probs]

    def predict_images(self, images: Sequence, top_k: Optional[int] = None,
                       labels: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
        """PIL images -> one result dict each."""
        return self.predict_features(self.extractor.encode_images(images), top_k, labels)

    def predict_paths(self, paths: Sequence[str], top_k: Optional[int] = None, progress: bool = False,
                      labels: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
        """Image files -> one dict each, in order: {path, label, score, scores, top_k} or {path, error}."""
        feats, errors = self.extractor.encode_paths(paths, progress=progress)
        ok = [i for i in range(len(paths)) if i not in errors]
        rows = dict(zip(ok, self.predict_features(feats[ok], top_k, labels)))
        return [{"path": str(p), **rows[i]} if i in rows else {"path": str(p), "error": errors[i]}
                for i, p in enumerate(paths)]


def _row(classes: Sequence[str], probs: np.ndarray, top_k: Optional[int]) -> dict[str, Any]:
    order = np.argsort(-probs, kind="stable")
    k = len(classes) if not top_k else min(top_k, len(classes))
    return {"label": classes[order[0]], "score": float(probs[order[0]]),
            "scores": {classes[i]: float(probs[i]) for i in range(len(classes))},
            "top_k": [{"label": classes[i], "score": float(probs[i])} for i in order[:k]]}


def load_head(spec: str):
    """A trained head from a folder, `runs:/RUN_ID/head` or `models:/NAME/VERSION`."""
    if spec.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        from .tracking import download_head  # mlflow is imported only for these URIs

        spec = download_head(spec)
    from .probe import LinearProbe

    return LinearProbe.load(spec)


def build_predictor(cfg: Config, head: Optional[str] = None, extractor=None) -> Predictor:
    """The Predictor for a config: a probe head when `head` is given, else zero-shot on the config's prompts.

    The head and the prompts are checked before the (slow) model load, so bad input fails in milliseconds.
    """
    probe = load_head(head) if head else None
    if probe is None:
        labels, templates = resolve_labels(cfg.prompts), resolve_templates(cfg.prompts)
    if extractor is None:
        from .features import FeatureExtractor

        extractor = FeatureExtractor.from_config(cfg.model)
    if probe is not None:
        return Predictor(extractor, probe)
    from .zeroshot import ZeroShotHead

    return Predictor(extractor, ZeroShotHead.from_extractor(extractor, labels, templates))
