"""Out-of-set ("unfamiliar") scores beside the class probabilities, and the saved detector that thresholds one.

Every score is a familiarity: HIGHER means more like what the head was trained on (known), so AUROC treats
known as the positive class and a detector rejects below its threshold. Inputs are L2-normalized features
(n, D) and, for the logit scores, the head's logits (n, C) before its temperature.

  knn          cosine similarity to the k-th nearest training feature (Sun et al., ICML 2022: kNN-OOD)
  mahalanobis  minus the smallest squared Mahalanobis distance to a class mean under one shared covariance
               (Lee et al., NeurIPS 2018), the covariance shrunk towards a multiple of the identity
  energy       T * logsumexp(logits / T) (Liu et al., NeurIPS 2020)
  maxlogit     the largest logit (Hendrycks et al., ICML 2022)
  msp          the largest softmax probability (the top-probability baseline that calibration thresholds)
  mcm          the largest softmax of cosine similarities to the class text embeddings at its own temperature
               (Ming et al., NeurIPS 2022: MCM; T = 1 on raw cosines there)
  neglabel     the softmax mass on the class texts among class texts + negative words, at a temperature
               (Jiang et al., ICLR 2024: NegLabel); the words are `negative_words.txt`, mined far from the labels
  relmahalanobis  the relative Mahalanobis score (Ren et al. 2021, "A simple fix to Mahalanobis distance for
               improving near-OOD detection"): the mahalanobis score minus the same score against one Gaussian
               fitted to all training features (the background), so directions every class varies in count less
  combined     knn + mahalanobis, each z-normalised by the mean and std of its scores on known val images
               (params loc, scale): the sum ranks an image low when either sees it far from the known classes
  combined_rel knn + relmahalanobis, likewise

`OpenSetDetector` is one of these with its arrays (training-feature bank, class means and precision, text and
negative-word embeddings) and a threshold; it is saved with the head (head.json "openset" + tensors named
"openset.*" in head.safetensors) and rejected inputs are "unfamiliar". numpy only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

DETECTORS = ("knn", "mahalanobis", "relmahalanobis", "energy", "maxlogit", "msp", "mcm", "neglabel", "combined",
             "combined_rel")
COMBINED = {"combined": ("knn", "mahalanobis"),  # the scores each sum kind adds, z-normalised, in this order
            "combined_rel": ("knn", "relmahalanobis")}
GAUSSIAN = ("means", "precision")
BACKGROUND = ("bg_mean", "bg_precision")  # relmahalanobis' one Gaussian of all training features
ARRAYS = {"knn": ("bank",), "mahalanobis": GAUSSIAN, "relmahalanobis": GAUSSIAN + BACKGROUND, "mcm": ("text",),
          "neglabel": ("text", "negatives")}  # the arrays each kind scores with (a sum: its parts')
ARRAYS.update({kind: tuple(n for part in parts for n in ARRAYS[part]) for kind, parts in COMBINED.items()})
NEEDS_LOGITS = ("energy", "maxlogit", "msp")
NEGATIVE_WORDS = Path(__file__).with_name("negative_words.txt")
NEGATIVE_TEMPLATE = "a photo of a {}."
MCM_TEMPERATURE = 1.0  # on raw cosines, as in the MCM paper (CLIP ViT-B/16: T = 1 was its best)
TENSOR_PREFIX = "openset."
CHUNK = 4096  # query rows at a time: the (rows, N) similarity block stays small


# ---------------------------------------------------------------- scores (pure functions)

def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x.reshape(1, -1) if x.ndim == 1 else x


def knn_similarity(features: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """(n,) cosine similarity of each feature to its k-th nearest row of `bank` (N, D); k is capped at N."""
    f, bank = _rows(features), _rows(bank)
    k = max(1, min(int(k), len(bank)))
    out = np.empty(len(f), np.float32)
    for i in range(0, len(f), CHUNK):
        sim = f[i:i + CHUNK] @ bank.T
        out[i:i + CHUNK] = -np.partition(-sim, k - 1, axis=1)[:, k - 1]
    return out


def class_gaussian(X: np.ndarray, y: np.ndarray, n_classes: int, shrinkage: float = 0.1
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(class means (C, D), precision (D, D)) of one shared covariance, shrunk: (1 - s) * S + s * tr(S) / D * I.
    A class without rows gets a mean of NaN (and so never matches)."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.int64)
    means = np.full((n_classes, X.shape[1]), np.nan)
    centred = []
    for c in range(n_classes):
        rows = X[y == c]
        if len(rows):
            means[c] = rows.mean(axis=0)
            centred.append(rows - means[c])
    Z = np.concatenate(centred)
    cov = Z.T @ Z / max(1, len(Z))
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    return means.astype(np.float32), np.linalg.pinv(cov).astype(np.float32)


def mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(n,) minus the smallest squared Mahalanobis distance to a class mean (classes with NaN means skipped)."""
    f = _rows(features).astype(np.float64)
    means = np.asarray(means, np.float64)
    means = means[np.isfinite(means).all(axis=1)]
    P = np.asarray(precision, np.float64)
    fP = f @ P
    d = (fP * f).sum(axis=1)[:, None] - 2 * fP @ means.T + ((means @ P) * means).sum(axis=1)[None]
    return (-d.min(axis=1)).astype(np.float32)


def relative_mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: np.ndarray,
                               bg_mean: np.ndarray, bg_precision: np.ndarray) -> np.ndarray:
    """(n,) minus the smallest relative Mahalanobis distance: min_c MD_c - MD_0, MD_0 the squared distance to the
    background Gaussian (bg_mean (1, D), bg_precision (D, D): `class_gaussian` of every row as one class)."""
    return (mahalanobis_score(features, means, precision)
            - mahalanobis_score(features, bg_mean, bg_precision)).astype(np.float32)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(n,) T * logsumexp(logits / T): minus the free energy."""
    z = np.asarray(logits, np.float64)
    return (temperature * _logsumexp(z / temperature)).astype(np.float32)


def max_logit(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits, np.float32).max(axis=1)


def max_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(n,) the top softmax probability of logits / T."""
    z = np.asarray(logits, np.float64) / temperature
    return np.exp(z.max(axis=1) - _logsumexp(z)).astype(np.float32)


def mcm_score(features: np.ndarray, text: np.ndarray, temperature: float = MCM_TEMPERATURE) -> np.ndarray:
    """(n,) MCM: max over classes of softmax(cos(feature, text) / T); text (C, D) L2-normalized."""
    return max_softmax(_rows(features) @ _rows(text).T, temperature)


def neglabel_score(features: np.ndarray, text: np.ndarray, negatives: np.ndarray,
                   temperature: float = MCM_TEMPERATURE) -> np.ndarray:
    """(n,) NegLabel: the softmax mass of the C class texts among class texts + M negative words, at T."""
    f = _rows(features)
    z = np.concatenate([f @ _rows(text).T, f @ _rows(negatives).T], axis=1).astype(np.float64) / temperature
    pos = _logsumexp(z[:, :len(text)])
    return np.exp(pos - _logsumexp(z)).astype(np.float32)


def familiarity(kind: str, features: np.ndarray, logits: Optional[np.ndarray], arrays: dict[str, np.ndarray],
                params: dict[str, Any]) -> np.ndarray:
    """(n,) the score `kind` with its arrays and params (see `OpenSetDetector`); higher = more familiar."""
    if kind == "knn":
        return knn_similarity(features, arrays["bank"], params.get("k", 10))
    if kind == "mahalanobis":
        return mahalanobis_score(features, arrays["means"], arrays["precision"])
    if kind == "relmahalanobis":
        return relative_mahalanobis_score(features, *(arrays[n] for n in GAUSSIAN + BACKGROUND))
    if kind in COMBINED:
        loc, scale = params["loc"], params["scale"]
        parts = [(familiarity(p, features, None, arrays, params) - m) / s
                 for p, m, s in zip(COMBINED[kind], loc, scale)]
        return np.sum(parts, axis=0).astype(np.float32)
    if kind in NEEDS_LOGITS:
        if logits is None:
            raise ValueError(f"the {kind} score needs the head's logits")
        t = params.get("temperature", 1.0)
        return {"energy": lambda: energy_score(logits, t), "maxlogit": lambda: max_logit(logits),
                "msp": lambda: max_softmax(logits, t)}[kind]()
    if kind == "mcm":
        return mcm_score(features, arrays["text"], params.get("temperature", MCM_TEMPERATURE))
    if kind == "neglabel":
        return neglabel_score(features, arrays["text"], arrays["negatives"],
                              params.get("temperature", MCM_TEMPERATURE))
    raise ValueError(f"unknown out-of-set score {kind!r} (known: {', '.join(DETECTORS)})")


# ---------------------------------------------------------------- the saved detector

class OpenSetDetector:
    """One familiarity score and its threshold: `unfamiliar(features, logits)` is True where the score is
    below `threshold_` (None: it scores but rejects nothing).

    kind: one of DETECTORS; params: k (knn, combined, combined_rel), temperature (energy, msp, mcm, neglabel), loc
    and scale (combined, combined_rel: one per part in COMBINED); arrays: bank (N, D) for knn, means (C, D) +
    precision (D, D) for mahalanobis, those + bg_mean (1, D) + bg_precision (D, D) for relmahalanobis, bank and
    its part's arrays for combined / combined_rel, text (C, D) for mcm, text + negatives (M, D) for neglabel.
    `selection` says how it was chosen: the rule, its target, each candidate's held-out-class AUROC.
    Never changed after it is built: `with_threshold` returns a copy."""

    def __init__(self, kind: str, params: Optional[dict[str, Any]] = None,
                 arrays: Optional[dict[str, np.ndarray]] = None, threshold: Optional[float] = None,
                 selection: Optional[dict[str, Any]] = None):
        if kind not in DETECTORS:
            raise ValueError(f"unknown out-of-set score {kind!r} (known: {', '.join(DETECTORS)})")
        self.kind, self.params = kind, dict(params or {})
        self.arrays_ = {k: np.asarray(v, np.float32) for k, v in (arrays or {}).items()}
        missing = [n for n in ARRAYS.get(kind, ()) if n not in self.arrays_]
        if missing:
            raise ValueError(f"the {kind} detector needs arrays {', '.join(missing)}")
        if kind in COMBINED and not all(len(self.params.get(p, ())) == len(COMBINED[kind]) and
                                        all(np.isfinite(v) and (p == "loc" or v > 0) for v in self.params[p])
                                        for p in ("loc", "scale")):
            raise ValueError(f"the {kind} detector needs params loc and scale: {len(COMBINED[kind])} finite "
                             "numbers each, scale > 0")
        if threshold is not None and not np.isfinite(float(threshold)):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        self.threshold_ = None if threshold is None else float(threshold)
        self.selection_ = dict(selection or {})

    @property
    def needs_logits(self) -> bool:
        return self.kind in NEEDS_LOGITS

    def score(self, features: np.ndarray, logits: Optional[np.ndarray] = None) -> np.ndarray:
        """(n,) familiarity of (n, D) features (logits (n, C) for the logit scores); higher = more familiar."""
        if len(features) == 0:
            return np.zeros(0, np.float32)
        return familiarity(self.kind, features, logits, self.arrays_, self.params)

    def unfamiliar(self, features: np.ndarray, logits: Optional[np.ndarray] = None) -> np.ndarray:
        """(n,) bools: True where the score is below the threshold (all False without one)."""
        if self.threshold_ is None:
            return np.zeros(len(features), bool)
        return self.score(features, logits) < self.threshold_

    def with_threshold(self, threshold: Optional[float], **selection: Any) -> "OpenSetDetector":
        return OpenSetDetector(self.kind, self.params, self.arrays_, threshold, {**self.selection_, **selection})

    def describe(self) -> dict[str, Any]:
        """What head.json keeps (and /v1/info and the reports show): kind, params, threshold, selection."""
        return {"kind": self.kind, "params": self.params, "threshold": self.threshold_, "selection": self.selection_,
                "arrays": {k: list(v.shape) for k, v in self.arrays_.items()}}

    def tensors(self) -> dict[str, np.ndarray]:
        return {TENSOR_PREFIX + k: v for k, v in self.arrays_.items()}


def detector_of(head) -> Optional[OpenSetDetector]:
    """The head's detector (None for heads saved without one, and for old heads)."""
    return getattr(head, "openset_", None)


def with_detector(head, detector: Optional[OpenSetDetector]):
    """A copy of `head` carrying `detector` (the head itself is unchanged)."""
    import copy

    out = copy.copy(head)
    out.openset_ = detector
    return out


def unfamiliar_mask(head, features: np.ndarray) -> np.ndarray:
    """(n,) bools: the head's detector's verdict on (n, D) features (all False without a detector)."""
    det = detector_of(head)
    if det is None or det.threshold_ is None or len(features) == 0:
        return np.zeros(len(features), bool)
    logits = head.decision_function(features) if det.needs_logits else None
    return det.unfamiliar(features, logits)


# ---------------------------------------------------------------- the negative vocabulary

def negative_words(path: Path = NEGATIVE_WORDS) -> list[str]:
    """The shipped word list: one word a line, '#' comments and blanks skipped, duplicates dropped."""
    words = (w.strip() for w in path.read_text(encoding="utf-8").splitlines())
    return list(dict.fromkeys(w for w in words if w and not w.startswith("#")))


def mine_negatives(word_emb: np.ndarray, text: np.ndarray, keep: float = 0.5) -> np.ndarray:
    """Indices of the `keep` share of words farthest from the labels (lowest max cosine to any class text),
    as NegLabel's NegMining picks negatives far from the known labels; sorted."""
    closest = (_rows(word_emb) @ _rows(text).T).max(axis=1)
    n = max(1, int(round(keep * len(closest))))
    return np.sort(np.argsort(closest, kind="stable")[:n])


def negative_embeddings(extractor, cache_dir: Optional[str | Path] = None,
                        template: str = NEGATIVE_TEMPLATE, known: Optional[np.ndarray] = None) -> np.ndarray:
    """(M, D) L2-normalized embeddings of the negative words in `template`, encoded once per model: cached in
    `cache_dir` (if given) under a name keyed by the extractor's identity, the template and the word list.
    `known`: the embeddings already at hand (this process encoded them): written to the cache, not encoded."""
    import hashlib
    import json

    words = negative_words()
    key = hashlib.sha256(json.dumps([extractor.identity.to_dict(), template, words], sort_keys=True,
                                    default=str).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"negatives-{key}.npy" if cache_dir else None
    if path is not None and path.is_file():
        emb = np.load(path)
        if emb.shape[0] == len(words):
            return emb
    if known is not None and len(known) == len(words):
        emb = np.asarray(known, np.float32)
    else:
        emb = np.asarray(extractor.encode_texts([template.format(w) for w in words]), np.float32)
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    if path is not None:
        import io

        from toolkit.fsio import write_bytes

        buf = io.BytesIO()
        np.save(buf, emb)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, buf.getvalue())
    return emb


# ---------------------------------------------------------------- zero-shot heads for request-time labels

def zeroshot_default(text: np.ndarray, negatives: Optional[np.ndarray] = None,
                     temperature: float = MCM_TEMPERATURE, quantile: float = 0.5) -> OpenSetDetector:
    """The detector a zero-shot head built for labels given at request time gets (no images to choose one on):
    MCM at `temperature` over the labels' text embeddings (C, D), with a threshold from the model's own
    text-to-text similarities: the `quantile` of the MCM scores the negative words' text embeddings get
    against the labels (an image the labels claim no more than a typical unrelated word is claimed is
    unfamiliar). Softmax ignores a shift shared by all labels, so the modality gap's common offset cancels;
    what is left is a default, not a tuned threshold, and the selection says so. Without negatives: no
    threshold (MCM scores only)."""
    threshold = None
    if negatives is not None and len(negatives):
        threshold = float(np.quantile(mcm_score(negatives, text, temperature), quantile))
    return OpenSetDetector("mcm", {"temperature": temperature}, {"text": text}, threshold,
                           {"rule": "zeroshot_default", "reference": "negative words (text-to-text)",
                            "quantile": quantile, "temperature": temperature})


def read_detector(path: str | Path, doc: dict[str, Any]) -> OpenSetDetector:
    """The detector head.json's "openset" describes, its "openset.*" tensors read from head.safetensors (only
    those, each checked against the shape head.json records first); ValueError naming what is wrong."""
    from safetensors import safe_open

    if not isinstance(doc, dict) or not isinstance(doc.get("arrays", {}), dict):
        raise ValueError("head.json 'openset' should be an object with 'kind' and 'arrays'")
    arrays = {}
    with safe_open(str(path), framework="numpy") as f:
        present = set(f.keys())
        for name, shape in (doc.get("arrays") or {}).items():
            key = TENSOR_PREFIX + name
            if key not in present:
                raise ValueError(f"head.safetensors lacks tensor '{key}' of the out-of-set detector")
            got = list(f.get_slice(key).get_shape())
            if got != list(shape):
                raise ValueError(f"tensor '{key}' has shape {got}, head.json says {list(shape)}")
            arrays[name] = np.asarray(f.get_tensor(key), np.float32)
    return OpenSetDetector(doc["kind"], doc.get("params"), arrays, doc.get("threshold"), doc.get("selection"))


_NEGATIVES: dict[str, np.ndarray] = {}  # identity -> negative-word embeddings, encoded once per process and model


def with_zeroshot_default(head, extractor, cache_dir: Optional[str | Path] = None):
    """A zero-shot head without a detector gets `zeroshot_default` (MCM, threshold from the negative words'
    text-to-text scores); other heads, and zero-shot heads that carry a detector, are returned as they are.
    The words are encoded once per process and model, and with `cache_dir` once per model (kept on disk)."""
    if getattr(head, "kind", None) != "zeroshot" or detector_of(head) is not None:
        return head
    import json

    key = json.dumps(extractor.identity.to_dict(), sort_keys=True, default=str)
    if key not in _NEGATIVES or cache_dir is not None:  # the disk cache is read (or filled) when there is one
        _NEGATIVES[key] = negative_embeddings(extractor, cache_dir, known=_NEGATIVES.get(key))
    return with_detector(head, zeroshot_default(head.coef_, _NEGATIVES[key]))
