"""Predictor(extractor, head): the narrow waist. Every prediction (CLI, server, videos, MLflow model) goes
through `Predictor.proba`, and every image result document is built by `image_document`.

Heads come from local folders only (`heads.load_head`); the edges (CLI commands, `create_app`) turn
runs:/ and models:/ URIs into folders with toolkit.tracking.adapter before they get here. Nothing here imports
MLflow, Lightning or FastAPI.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from toolkit.config import Config
from toolkit.identity import adopt_model
from toolkit.errors import ConfigError, HeadError
from toolkit.heads.base import Head, load_head
from toolkit.heads.openset import unfamiliar_mask, with_zeroshot_default
from toolkit.heads.prompts import resolve_labels, resolve_templates, validate_labels


def check_head_matches(head, identity) -> None:
    """Refuse a head whose features came from another extractor than the one of `identity`."""
    ident = getattr(head, "identity", None)
    if ident is None:
        return
    reason = identity.mismatch(ident)
    if reason:
        raise HeadError(f"head was trained on features of {ident.label}, but the loaded model is "
                        f"{identity.label}: {reason}; load it with {{field}}/{{field:pretrained}} of its own model",
                        field="model")


class Predictor:
    """Features (or images) in, (classes, probabilities) out. One extractor, one default head, and for a
    zero-shot head a bounded cache of heads for other label sets."""

    def __init__(self, extractor, head: Head, max_label_sets: int = 64, unfamiliar: str = "mcm",
                 cache_dir: Optional[str | Path] = None):
        check_head_matches(head, extractor.identity)
        self.unfamiliar = unfamiliar  # zero-shot heads for request labels: "mcm" default detector, or "off"
        self.cache_dir = cache_dir  # where the negative-word embeddings of the default detector are kept (None: not)
        self.extractor, self.head = extractor, head
        self._heads: OrderedDict[tuple[str, ...], Head] = OrderedDict([(tuple(head.classes_), head)])
        self._max_label_sets = max_label_sets
        self._heads_lock = threading.Lock()  # the server looks heads up on its event loop, encodes in a thread

    @property
    def identity(self):
        """The extractor's ExtractorIdentity: what the features (and so the head) belong to."""
        return self.extractor.identity

    @property
    def mode(self) -> str:
        return self.head.kind

    @property
    def labels(self) -> list[str]:
        return list(self.head.classes_)

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "model": self.identity.model, "pretrained": self.identity.pretrained,
                "identity": self.identity.to_dict(), "labels": self.labels, "head": self.head.describe()}

    def head_for(self, labels: Optional[Sequence[str]] = None) -> Head:
        """The default head, or (zero-shot only) a head for another label set, cached per label set (LRU)."""
        if not labels:
            return self.head
        if self.mode != "zeroshot":
            raise ConfigError("custom labels only work in zero-shot mode; a probe head has fixed classes "
                              f"{self.head.classes_}")
        cached = self.cached_head(labels)
        if cached is not None:
            return cached
        from toolkit.heads.zeroshot import ZeroShotHead

        key = tuple(validate_labels(labels, "the request's labels"))
        head = ZeroShotHead.from_extractor(self.extractor, key, self.head.templates)
        if self.unfamiliar == "mcm":  # request-time labels: MCM with a text-derived threshold (heads.openset)
            head = with_zeroshot_default(head, self.extractor, self.cache_dir)
        with self._heads_lock:
            self._heads[key] = head
            while len(self._heads) > self._max_label_sets:
                self._heads.popitem(last=False)
        return head

    def cached_head(self, labels: Optional[Sequence[str]] = None) -> Optional[Head]:
        """head_for(labels) when it needs no text encoding (the default head, or a label set in the cache), else
        None; never runs the model. Bad labels, or labels for a probe head, raise as in head_for."""
        if not labels:
            return self.head
        if self.mode != "zeroshot":
            raise ConfigError("custom labels only work in zero-shot mode; a probe head has fixed classes "
                              f"{self.head.classes_}")
        key = tuple(validate_labels(labels, "the request's labels"))
        with self._heads_lock:
            head = self._heads.get(key)
            if head is not None:
                self._heads.move_to_end(key)
        return head

    # -- scoring
    def proba(self, features: np.ndarray, labels: Optional[Sequence[str]] = None
              ) -> tuple[list[str], np.ndarray]:
        """(n, D) L2-normalized features -> (classes, (n, C) probabilities, columns in `classes` order,
        rows sum to 1). `labels` scores another label set (zero-shot only)."""
        head = self.head_for(labels)
        classes = list(head.classes_)
        if len(features) == 0:
            return classes, np.zeros((0, len(classes)))
        return classes, head.predict_proba(np.asarray(features, np.float32))

    def threshold(self, override: Optional[float] = None, labels: Optional[Sequence[str]] = None
                  ) -> Optional[float]:
        """The "none of these" threshold: predictions whose top probability is below it are rejected.

        `override` (a per-call value in [0, 1]; 0 disables rejection) wins; else the head's `reject_below`,
        which was chosen on the head's own classes, so it does not apply to another label set (`labels`)."""
        if override is not None:
            if not (isinstance(override, (int, float)) and 0.0 <= float(override) <= 1.0):
                raise ConfigError(f"{{field}} {override!r} should be a number between 0 and 1 (0 rejects nothing)",
                                  field="reject_below")
            return float(override) or None
        if labels and self.head_for(labels) is not self.head:
            return None
        return self.head.reject_below_

    def predict_features(self, features: np.ndarray, top_k: Optional[int] = None,
                         labels: Optional[Sequence[str]] = None, reject_below: Optional[float] = None,
                         head: Optional[Head] = None) -> list[dict[str, Any]]:
        """(n, D) features -> n dicts {label, score, scores, top_k, rejected}; scores ordered as the head's
        classes. `reject_below` overrides the head's threshold for this call (0: reject nothing). `head`: the
        head for `labels` when the caller already holds it (the server's text lane), so nothing is encoded here."""
        threshold = self.threshold(reject_below, labels)
        head = head if head is not None else self.head_for(labels)
        classes = list(head.classes_)
        probs = (head.predict_proba(np.asarray(features, np.float32)) if len(features)
                 else np.zeros((0, len(classes))))
        if getattr(self.head, "multi_label", False):  # every class on its own, with its own threshold
            return multilabel_rows(self.head, probs, top_k, reject_below)
        unfamiliar = unfamiliar_mask(head, features)  # the head's out-of-set detector, if any
        return [result_row(classes, p, top_k, threshold, bool(u)) for p, u in zip(probs, unfamiliar)]

    def predict_images(self, images: Sequence, top_k: Optional[int] = None,
                       labels: Optional[Sequence[str]] = None, reject_below: Optional[float] = None
                       ) -> list[dict[str, Any]]:
        """PIL images -> one result dict each."""
        return self.predict_features(self.extractor.encode_images(images), top_k, labels, reject_below)

    def predict_paths(self, paths: Sequence[str], top_k: Optional[int] = None, progress: bool = False,
                      labels: Optional[Sequence[str]] = None, reject_below: Optional[float] = None
                      ) -> list[dict[str, Any]]:
        """Image files -> one dict each, in order: {path, label, score, scores, top_k, rejected} or
        {path, error}."""
        self.threshold(reject_below, labels)  # a bad threshold fails before any image is read
        feats, errors = self.extractor.encode_paths(paths, progress=progress)
        ok = [i for i in range(len(paths)) if i not in errors]
        rows = dict(zip(ok, self.predict_features(feats[ok], top_k, labels, reject_below)))
        return [{"path": str(p), **rows[i]} if i in rows else {"path": str(p), "error": errors[i]}
                for i, p in enumerate(paths)]

    def iter_paths(self, paths: Sequence[str], top_k: Optional[int] = None, progress: bool = False,
                   labels: Optional[Sequence[str]] = None, reject_below: Optional[float] = None
                   ) -> Iterator[dict[str, Any]]:
        """`predict_paths` one batch at a time: each image's dict as soon as its batch is done, in order."""
        self.threshold(reject_below, labels)
        from tqdm import tqdm

        with tqdm(total=len(paths), unit="img", desc="encoding", disable=not progress, leave=False) as bar:
            for idx, feats, errors in self.extractor.iter_path_batches(paths):
                rows = dict(zip(idx, self.predict_features(feats, top_k, labels, reject_below)))
                for i in sorted([*idx, *errors]):
                    yield {"path": str(paths[i]), **rows[i]} if i in rows else \
                        {"path": str(paths[i]), "error": errors[i]}
                bar.update(len(idx) + len(errors))


def reject_mask(probs: np.ndarray, threshold: Optional[float]) -> np.ndarray:
    """(n, C) probabilities -> (n,) bools, True where the top probability is below `threshold` ("none of
    these"); all False when `threshold` is None or 0. A (C,) row gives a 0-d bool."""
    probs = np.asarray(probs)
    if not threshold:
        return np.zeros(probs.shape[:-1], bool)
    return probs.max(axis=-1) < threshold


def predict_store(predictor: Predictor, store, top_k: Optional[int] = None, chunk: int = 4096,
                  **options: Any) -> Iterator[dict[str, Any]]:
    """The rows of a feature store classified without encoding them again: {path, label, score, ...} in the
    store's order, `chunk` rows at a time, so memory stays flat however large the store. `options` go to
    `predict_features`. DataError when the store holds features of another model."""
    from toolkit.data.sources import check_store_model

    check_store_model(store, predictor.identity)
    for start in range(0, len(store), chunk):
        feats = np.asarray(store.features[start:start + chunk], np.float32)
        rows = predictor.predict_features(feats, top_k, **options)
        for path, row in zip(store.paths[start:start + chunk], rows):
            yield {"path": str(path), **row}


def result_row(classes: Sequence[str], probs: np.ndarray, top_k: Optional[int],
               reject_below: Optional[float] = None, unfamiliar: bool = False) -> dict[str, Any]:
    """One image's result: best label and score, every label's score, the `top_k` best, and whether it was
    rejected and why (`reason`): "unfamiliar" (the head's out-of-set detector: far from everything it knows)
    or "low_confidence" (top score below `reject_below`: between known classes); then `label` is None, the
    scores are still there. `reason` is None for an accepted image."""
    order = np.argsort(-probs, kind="stable")
    k = len(classes) if not top_k else min(top_k, len(classes))
    low = bool(reject_mask(probs, reject_below))
    rejected = unfamiliar or low
    return {"label": None if rejected else classes[order[0]], "score": float(probs[order[0]]),
            "rejected": rejected, "reason": "unfamiliar" if unfamiliar else "low_confidence" if low else None,
            "scores": {classes[i]: float(probs[i]) for i in range(len(classes))},
            "top_k": [{"label": classes[i], "score": float(probs[i])} for i in order[:k]]}


def multilabel_rows(head, probs: np.ndarray, top_k: Optional[int], reject_below: Optional[float] = None
                    ) -> list[dict[str, Any]]:
    """The result rows of a multi-label head's (n, C) probabilities (see `multilabel_row`); ConfigError when a
    single-label "none of these" threshold is asked of it (`reject_below` given and not 0)."""
    if reject_below:
        raise ConfigError("{field} rejects a single-label prediction, but this head is multi-label: each class has "
                          "its own threshold (saved with the head); drop {field}", field="reject_below")
    return [multilabel_row(head.classes_, p, top_k, head.thresholds_) for p in probs]


def multilabel_row(classes: Sequence[str], probs: np.ndarray, top_k: Optional[int],
                   thresholds: np.ndarray) -> dict[str, Any]:
    """One image's multi-label result: `labels`, every class whose probability reaches its threshold (in class
    order, possibly none), with result_row's fields (`label` the best class when it is on, else None)."""
    row = result_row(classes, probs, top_k)
    on = [c for c, p, t in zip(classes, probs, thresholds) if p >= t]
    return {**row, "labels": on, "label": row["label"] if row["label"] in on else None,
            "thresholds": {c: float(t) for c, t in zip(classes, thresholds)}}


def image_document(predictor: Predictor, results: list[dict[str, Any]], labels: Optional[Sequence[str]] = None,
                   reject_below: Optional[float] = None, head: Optional[Head] = None) -> dict[str, Any]:
    """The image result document of `clipkit predict --format json` and `POST /v1/predict`:
    {model, pretrained, mode, labels, reject_below, unfamiliar, results: [...]}; `unfamiliar`: the head's
    out-of-set detector in brief (`unfamiliar_summary`); `reject_below` is the threshold applied
    (None: no rejection), passed by the caller who applied it; `head`: the head that scored them, when the
    caller holds it (else head_for(labels))."""
    ident = predictor.identity
    head = head or predictor.head_for(labels)
    return {"model": ident.model, "pretrained": ident.pretrained, "mode": predictor.mode,
            "labels": list(head.classes_), "reject_below": reject_below, "unfamiliar": unfamiliar_summary(head),
            "results": results}


def unfamiliar_summary(head) -> Optional[dict[str, Any]]:
    """Which out-of-set detector the head applies, in brief: {detector, threshold, rule} (rule: how it was
    chosen: keep_known / target_precision by held-out classes, zeroshot_default for labels without images);
    None when it has none (nothing is rejected as unfamiliar)."""
    det = getattr(head, "openset_", None)
    if det is None:
        return None
    name = det.kind + ("" if "k" not in det.params else f"(k={det.params['k']})")
    return {"detector": name, "threshold": det.threshold_, "rule": det.selection_.get("rule")}


def serving_head(cfg: Config, head: Optional[str] = None, mode: Optional[str] = None) -> Optional[str]:
    """The head that `clipkit serve` and `create_app` serve, or None for zero-shot.

    `head` and `mode` are what the caller was given (flags, create_app's argument); otherwise the config's
    serve.mode and serve.head decide. A given head means probe mode unless zeroshot was asked for: then
    they conflict."""
    if head and mode == "zeroshot":
        raise ConfigError(f"{{field}} zeroshot conflicts with {{field:head}} {head}; drop {{field:head}}, or use "
                          "{field} probe", field="mode")
    mode = mode or ("probe" if head else cfg.serve.mode)
    if mode == "zeroshot":
        return None
    head = head or cfg.serve.head
    if not head:
        raise ConfigError("{field:mode} probe needs a head; pass {field} PATH|runs:/RUN_ID/head|models:/NAME/VERSION "
                          "(or set serve.head in the config), or use {field:mode} zeroshot", field="head")
    return head


def build_predictor(cfg: Config, head=None, extractor=None, open_extractor=None,
                    cache_dir: Optional[str | Path] = None) -> Predictor:
    """The Predictor for a config: a probe head when `head` is given (a loaded head or a local folder),
    else zero-shot on the config's prompts. The head and the prompts are checked before the (slow) model
    load, so bad input fails in milliseconds. With a head and no model given, the head's own model is built
    (identity.adopt_model). `open_extractor(model_config)` builds the extractor (default: the torch
    FeatureExtractor; `clipkit predict` passes encoder.fast's, which may give an ONNX Runtime one).

    A zero-shot head (the config's labels, or a saved zero-shot head without a detector of its own) gets the
    default "unfamiliar" detector unless prompts.unfamiliar is off (heads.openset.zeroshot_default); the
    negative words it is set on are encoded once per model and kept in `cache_dir` (the edges pass
    runtime.cache_root() / "negatives"; None: encoded once per process)."""
    if isinstance(head, (str, Path)):
        head = load_head(head)
    if head is not None and extractor is None:
        cfg = adopt_model(cfg, getattr(head, "identity", None), f"head '{head.method}'")
    if head is None:
        labels, templates = resolve_labels(cfg.prompts), resolve_templates(cfg.prompts)
    if extractor is None and open_extractor is not None:  # a head is checked before any one-time preparation
        check = (lambda identity: check_head_matches(head, identity)) if head is not None else None
        extractor = open_extractor(cfg.model, check=check)
    if extractor is None:
        from toolkit.encoder.features import FeatureExtractor

        extractor = FeatureExtractor.from_config(cfg.model)
    if head is None:
        from toolkit.heads.zeroshot import ZeroShotHead

        head = ZeroShotHead.from_extractor(extractor, labels, templates)
    if cfg.prompts.unfamiliar == "mcm":  # labels without images to choose a detector on (heads.openset); a head
        head = with_zeroshot_default(head, extractor, cache_dir)  # with its own detector, or a probe, keeps it
    return Predictor(extractor, head, unfamiliar=cfg.prompts.unfamiliar, cache_dir=cache_dir)
