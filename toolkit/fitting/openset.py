"""Choosing an out-of-set detector and its threshold without unknown images: hold each known class out in turn.

Val holds no unknowns, so (the standard trick) each known class c plays the unknown once: every candidate
detector is built from the other classes' training features (its bank, class means, text embeddings without
c; the head's logits without c's column), then scores the other classes' val images (known) against all of
c's images (unknown). A candidate's held-out-class AUROC is the mean over the C folds. The pick (`pick`), among
the kinds in `choose_from` (kNN and its sums with a Gaussian score by default):

  1. k at most the smallest class's share of the kNN bank (`k_cap`): beyond it a known image's k-th neighbour
     lies in another class, so the score stops measuring closeness to its own class (held-out classes, far from
     every class, can't show this: on the novel suite's near unknowns such k falls to AUROC 0.37-0.50);
  2. the one-standard-error rule (Breiman et al. 1984; Hastie et al., ESL 7.10): of the candidates whose mean
     held-out AUROC is within one standard error (over the held-out classes) of the best's, the smoothest:
     the largest k, then the sum with relative Mahalanobis, with Mahalanobis, kNN alone (`SMOOTHNESS`), then
     the higher held-out AUROC. The held-out AUROC of neighbouring k differs by less than its noise (0.05-0.06
     across classes on the novel suite), and its argmax leans to small k: a held-out class is far from the rest,
     which even few neighbours see, while near unknowns need the wider view of many.

It is built again from every class, and its threshold is set on the known val images for a target:

  keep_known P        keep a share P of known val (the threshold is val's (1 - P) quantile of the score)
  target_precision P  the lowest threshold at which P of the accepted fold images are known (the folds pooled,
                      each fold's unknown class weighted as much as its known images), so it is a precision on a
                      balanced mix of known and never-seen images

Two remarks. Dropping c's logit column flatters the logit scores of a trained head (it was trained with c,
which pushed c's images away from the other classes); scores from features and text (knn, mahalanobis, mcm,
neglabel, and every score of a zero-shot head) have no such advantage. The fold results are in `candidates`
so a reader can see the margins. numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from toolkit.errors import ConfigError
from toolkit.heads.openset import (COMBINED, MCM_TEMPERATURE, NEEDS_LOGITS, OpenSetDetector, class_gaussian,
                                   familiarity, mine_negatives)

KNN_KS = (1, 5, 10, 20, 30, 50, 70)
MAX_FOLDS = 20  # classes held out at most (a seeded sample of them beyond this): C folds cost C detector builds
MAX_BANK = 4096  # training features a kNN detector keeps (an even share per class above this)
DEFAULT_CANDIDATES = ("knn", "combined", "combined_rel", "mahalanobis", "relmahalanobis", "energy", "maxlogit", "msp",
                      "mcm", "neglabel")  # all scored
# ... and the pick is made among these: held-out classes are far from the classes left (each is a class of its
# own), so the held-out AUROC flatters scores that only see far unknowns (Mahalanobis' one Gaussian per class,
# the logit and text scores: 0.80-0.85 held out vs 0.38-0.68 on the novel suite's near unknowns). kNN is the
# non-parametric choice of Sun et al.; its sums with (relative) Mahalanobis are allowed too: the Gaussian's
# flattered held-out share is only half of the score, and the sums are the most robust to k on the novel suite.
DEFAULT_CHOICE = ("knn", "combined", "combined_rel")
SMOOTHNESS = {"knn": 0, "combined": 1, "combined_rel": 2}  # at equal k: how much of the score a fitted Gaussian
# (global, smooth) gives rather than single neighbours; relative Mahalanobis (Ren et al. 2021) is the near-OOD fix


@dataclass
class Candidate:
    """One detector setting: its kind and params."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        extra = ",".join(f"{k}={v:g}" for k, v in self.params.items())
        return f"{self.kind}({extra})" if extra else self.kind


def candidates(kinds: Sequence[str], has_logits: bool, has_text: bool, has_negatives: bool,
               ks: Sequence[int] = KNN_KS, temperatures: Sequence[float] = (MCM_TEMPERATURE, 0.1, 0.01)
               ) -> list[Candidate]:
    """The settings tried: kNN at each k; energy and msp at T = 1; MCM and NegLabel at each temperature
    (those that need logits, text or negatives only where they are given)."""
    out = []
    for kind in kinds:
        if kind in ("knn", *COMBINED):
            out += [Candidate(kind, {"k": k}) for k in ks]
        elif kind in ("mahalanobis", "relmahalanobis"):
            out.append(Candidate(kind))
        elif kind in NEEDS_LOGITS and has_logits:
            out.append(Candidate(kind, {} if kind == "maxlogit" else {"temperature": 1.0}))
        elif kind == "mcm" and has_text:
            out += [Candidate("mcm", {"temperature": t}) for t in temperatures]
        elif kind == "neglabel" and has_text and has_negatives:
            out += [Candidate("neglabel", {"temperature": t}) for t in temperatures]
    return out


def build_arrays(kind: str, X: np.ndarray, y: np.ndarray, n_classes: int, text: Optional[np.ndarray],
                 negatives: Optional[np.ndarray], max_bank: int = MAX_BANK, seed: int = 0,
                 cache: Optional[dict] = None) -> dict[str, np.ndarray]:
    """The arrays a detector of `kind` keeps, from training features X (n, D) with class indices y. `cache`: a
    dict for one (X, y, text, negatives) that keeps each kind's arrays (they don't depend on k), so every k of a
    kind, and the sums' parts, share one build."""
    if cache is None:
        return _arrays(kind, X, y, n_classes, text, negatives, max_bank, seed, None)
    if kind not in cache:
        cache[kind] = _arrays(kind, X, y, n_classes, text, negatives, max_bank, seed, cache)
    return cache[kind]


def _arrays(kind, X, y, n_classes, text, negatives, max_bank, seed, cache) -> dict[str, np.ndarray]:
    if kind == "knn":
        return {"bank": compact_bank(X, y, max_bank, seed)}
    if kind == "mahalanobis":
        means, precision = class_gaussian(X, y, n_classes)
        return {"means": means, "precision": precision}
    if kind == "relmahalanobis":
        bg_mean, bg_precision = class_gaussian(X, np.zeros(len(X), np.int64), 1)
        return {**build_arrays("mahalanobis", X, y, n_classes, text, negatives, cache=cache), "bg_mean": bg_mean,
                "bg_precision": bg_precision}
    if kind in COMBINED:
        return {k: v for part in COMBINED[kind]
                for k, v in build_arrays(part, X, y, n_classes, text, negatives, max_bank, seed, cache).items()}
    if kind == "mcm":
        return {"text": text}
    if kind == "neglabel":
        return {"text": text, "negatives": negatives[mine_negatives(negatives, text)]}
    return {}


def build_detector(cand: Candidate, X: np.ndarray, y: np.ndarray, n_classes: int, text: Optional[np.ndarray],
                   negatives: Optional[np.ndarray], X_ref: np.ndarray, seed: int = 0,
                   cache: Optional[dict] = None) -> OpenSetDetector:
    """The candidate's detector (no threshold) from training features X (n, D) with class indices y; `X_ref`
    (m, D): known images it did not see (val), on which the sums z-normalise their parts (loc, scale); `cache`:
    see `build_arrays`."""
    arrays = build_arrays(cand.kind, X, y, n_classes, text, negatives, seed=seed, cache=cache)
    params = dict(cand.params)
    if cand.kind in COMBINED:
        parts = [familiarity(p, X_ref, None, arrays, params) for p in COMBINED[cand.kind]]
        params["loc"] = [float(np.mean(s)) for s in parts]
        params["scale"] = [float(max(np.std(s), 1e-6)) for s in parts]
    return OpenSetDetector(cand.kind, params, arrays)


def compact_bank(X: np.ndarray, y: np.ndarray, max_rows: int = MAX_BANK, seed: int = 0) -> np.ndarray:
    """X itself, or at most `max_rows` of its rows drawn evenly per class (seeded)."""
    if len(X) <= max_rows:
        return np.asarray(X, np.float32)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per = max(1, max_rows // len(classes))
    rows = np.concatenate([rng.permutation(np.nonzero(y == c)[0])[:per] for c in classes])
    return np.asarray(X[np.sort(rows)], np.float32)


def k_cap(y: np.ndarray, max_bank: int = MAX_BANK) -> int:
    """The largest k whose k-th neighbour can still be in a known image's own class: the smallest class's
    count in the kNN bank (`compact_bank` keeps at most max_bank // C a class when it subsamples)."""
    counts = np.bincount(np.asarray(y, np.int64))
    counts = counts[counts > 0]
    per = int(counts.min())
    return min(per, max(1, max_bank // len(counts))) if counts.sum() > max_bank else per


def with_cap(ks: Sequence[int], cap: int) -> tuple[int, ...]:
    """The k grid with `cap` itself added where the grid jumps over it (k = 16 with 16 images a class)."""
    return tuple(sorted(set(ks) | ({cap} if cap < max(ks) else set())))


def pick(pool: Sequence[Candidate], table: dict[str, dict[str, Any]], cap: int) -> tuple[Candidate, dict[str, Any]]:
    """The one-standard-error pick among `pool` (see the module doc) from `table` (name -> {auroc, per_class}):
    (the candidate, how: pick_rule, best_heldout (the argmax), heldout_se (its standard error over the held-out
    classes), within_se (the band's names), k_cap). Candidates with k above `cap` are left out (all of the pool
    when none is left)."""
    fits = [c for c in pool if c.params.get("k", 0) <= cap] or list(pool)
    best = max(fits, key=lambda c: table[c.name]["auroc"])  # first listed wins ties
    per = np.array(list(table[best.name]["per_class"].values()), np.float64)
    se = float(per.std(ddof=1) / np.sqrt(len(per))) if len(per) > 1 else 0.0
    band = [c for c in fits if table[c.name]["auroc"] >= table[best.name]["auroc"] - se - 1e-12]
    chosen = max(band, key=lambda c: (c.params.get("k", 0), SMOOTHNESS.get(c.kind, 0), table[c.name]["auroc"]))
    return chosen, {"pick_rule": "one standard error, smoothest", "best_heldout": best.name,
                    "heldout_se": se, "within_se": [c.name for c in band], "k_cap": int(cap)}


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(a known image scores above an unknown one), ties counting half (Mann-Whitney U / (n_k n_u))."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    _, inverse, counts = np.unique(np.r_[known, unknown], return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based ranks of ties
    n_k, n_u = len(known), len(unknown)
    return float((ranks[:n_k].sum() - n_k * (n_k + 1) / 2) / (n_k * n_u))


@dataclass
class OpenSetFit:
    """The chosen detector (threshold set), every candidate's held-out-class AUROC, the pooled fold scores."""

    detector: OpenSetDetector
    candidates: dict[str, dict[str, Any]]  # name -> {auroc (mean over folds), per_class {class: auroc}}
    chosen: str

    def report(self) -> dict[str, Any]:
        """For report.json, MLflow and the train-probe summary."""
        d = self.detector
        return {"detector": d.kind, "params": d.params, "threshold": d.threshold_, "chosen": self.chosen,
                "heldout_auroc": self.candidates[self.chosen]["auroc"], "selection": d.selection_,
                "candidates": {k: v["auroc"] for k, v in self.candidates.items()}}


def fit_openset(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
                classes: Sequence[str], logits_fn=None, text: Optional[np.ndarray] = None,
                negatives: Optional[np.ndarray] = None, kinds: Sequence[str] = DEFAULT_CANDIDATES,
                choose_from: Sequence[str] = DEFAULT_CHOICE,
                keep_known: Optional[float] = None, target_precision: Optional[float] = None,
                ks: Sequence[int] = KNN_KS, seed: int = 0) -> OpenSetFit:
    """Choose a detector by holding each known class out in turn and set its threshold (see the module doc).

    X_* (n, D) L2-normalized features, y_* class indices into `classes`; logits_fn: (n, D) -> (n, C) the head's
    logits (None: no logit scores); text (C, D): the class text embeddings (zero-shot weights; None: no MCM or
    NegLabel); negatives (M, D): negative-word embeddings (None: no NegLabel). `kinds` are all scored held out
    (the report shows them; kNN at `ks` and at the k cap), the pick is `pick`'s among `choose_from` (any kind
    when none of those can be built). At most one of keep_known and target_precision (neither: keep_known 0.95)."""
    if keep_known is not None and target_precision is not None:
        raise ConfigError("give exactly one of keep_known and target_precision for the out-of-set threshold")
    if keep_known is None and target_precision is None:
        keep_known = 0.95
    for name, v in (("keep_known", keep_known), ("target_precision", target_precision)):
        if v is not None and not 0 < float(v) <= 1:
            raise ConfigError(f"{name} {v!r} must be in (0, 1], e.g. {name} 0.95")
    n_classes = len(classes)
    y_train, y_val = np.asarray(y_train, np.int64), np.asarray(y_val, np.int64)
    if n_classes < 3:
        raise ConfigError(f"choosing an out-of-set detector holds each class out in turn and needs at least 3 "
                          f"classes, got {n_classes}")
    cap = k_cap(y_train)
    cands = candidates(kinds, logits_fn is not None, text is not None, negatives is not None, with_cap(ks, cap))
    if not cands:
        raise ConfigError(f"no out-of-set detector among {', '.join(kinds)} can be built from what was given")
    logits = {"train": logits_fn(X_train), "val": logits_fn(X_val)} if logits_fn is not None else None
    folds = _folds(cands, X_train, y_train, X_val, y_val, n_classes, logits, text, negatives, seed)
    table = {name: {"auroc": float(np.mean([f["auroc"] for f in fs])),
                    "per_class": {classes[f["held_out"]]: f["auroc"] for f in fs}} for name, fs in folds.items()}
    pool = [c for c in cands if c.kind in choose_from] or cands
    best, how = pick(pool, table, cap)
    det = build_detector(best, X_train, y_train, n_classes, text, negatives, X_val, seed=seed)
    val_scores = det.score(X_val, logits["val"] if logits is not None else None)
    if keep_known is not None:
        threshold = float(np.quantile(val_scores, 1 - keep_known, method="lower")) if keep_known < 1 \
            else float(val_scores.min())
        rule = {"rule": "keep_known", "target": float(keep_known)}
    else:
        threshold = _precision_threshold(folds[best.name], float(target_precision))
        rule = {"rule": "target_precision", "target": float(target_precision)}
    kept = float((val_scores >= threshold).mean())
    det = det.with_threshold(threshold, **rule, val_known_kept=kept, heldout_auroc=table[best.name]["auroc"],
                             method="held-out class", chosen_from=sorted({c.kind for c in pool}), **how)
    return OpenSetFit(det, table, best.name)


def _folds(cands: Sequence[Candidate], X_train, y_train, X_val, y_val, n_classes, logits, text, negatives,
           seed) -> dict[str, list[dict]]:
    """{candidate name: one {held_out, auroc, known, unknown} per held-out class}: each candidate built without
    that class, its images as unknown. Fold by fold, so a fold's arrays (bank, Gaussians) are built once for
    every candidate and dropped before the next fold."""
    out: dict[str, list[dict]] = {c.name: [] for c in cands}
    held = range(n_classes) if n_classes <= MAX_FOLDS else \
        np.sort(np.random.default_rng(seed).choice(n_classes, MAX_FOLDS, replace=False))
    for c in held:
        keep = np.r_[:c, c + 1:n_classes]  # the other classes' columns / rows
        tr, va = y_train != c, y_val != c
        remap = np.full(n_classes, -1)
        remap[keep] = np.arange(len(keep))
        t = text[keep] if text is not None else None
        X_unknown = np.concatenate([X_val[~va], X_train[~tr]])
        lk = lu = None
        if logits is not None:
            lk = logits["val"][va][:, keep]
            lu = np.concatenate([logits["val"][~va], logits["train"][~tr]])[:, keep]
        X_tr, y_tr, cache = X_train[tr], remap[y_train[tr]], {}
        for cand in cands:
            det = build_detector(cand, X_tr, y_tr, len(keep), t, negatives, X_val[va], seed, cache)
            known, unknown = det.score(X_val[va], lk), det.score(X_unknown, lu)
            out[cand.name].append({"held_out": int(c), "auroc": auroc(known, unknown), "known": known,
                                   "unknown": unknown})
    return out


def _precision_threshold(folds: list[dict], target: float) -> float:
    """The lowest threshold at which a share `target` of the accepted pooled fold images are known, each fold's
    unknowns weighted to count as much as its known images (a balanced mix)."""
    scores, weights, known = [], [], []
    for f in folds:
        n_k, n_u = len(f["known"]), len(f["unknown"])
        scores += [f["known"], f["unknown"]]
        weights += [np.full(n_k, 1.0), np.full(n_u, n_k / max(1, n_u))]
        known += [np.ones(n_k, bool), np.zeros(n_u, bool)]
    s, w, k = (np.concatenate(a) for a in (scores, weights, known))
    order = np.argsort(-s, kind="stable")
    s, w, k = s[order], w[order], k[order]
    precision = np.cumsum(w * k) / np.cumsum(w)
    ok = np.nonzero(precision >= target - 1e-12)[0]
    return float(s[ok[-1]]) if len(ok) else float(s[0])


# ---------------------------------------------------------------- train-probe's step

def attach_openset(cal, data, cfg, negatives: Optional[np.ndarray] = None):
    """train_probe's out-of-set step (cfg.keep_known set): `fit_openset` on the store's train and val features
    with the calibrated head's logits and, when there is a zero-shot baseline, its class text embeddings (MCM;
    NegLabel too with `negatives`); returns `cal` (fitting.probe.Calibrated) with the head carrying the detector
    and reports["openset"]: the choice, every candidate's held-out-class AUROC, and known test kept. With fewer
    than 3 classes nothing can be held out: the head is left without a detector and the report says why."""
    import dataclasses

    from toolkit.heads.openset import with_detector

    (X_tr, y_tr), (X_val, y_val), (X_te, _) = (data.arrays[s] for s in ("train", "val", "test"))
    if len(data.classes) < 3:
        note = f"no out-of-set detector: holding a class out needs 3 or more classes, the store has {len(data.classes)}"
        return dataclasses.replace(cal, reports={**cal.reports, "openset": {"note": note}})
    text = cal.zeroshot.coef_ if cal.zeroshot is not None else None
    fit = fit_openset(X_tr, y_tr, X_val, y_val, data.classes, cal.head.decision_function, text, negatives,
                      keep_known=cfg.keep_known, seed=cfg.seed)
    det = fit.detector
    report = fit.report()
    if len(X_te):
        report["test_known_kept"] = float(1 - det.unfamiliar(X_te, cal.head.decision_function(X_te)
                                                              if det.needs_logits else None).mean())
    return dataclasses.replace(cal, head=with_detector(cal.head, det), reports={**cal.reports, "openset": report})


def openset_scalars(report: Optional[dict[str, Any]]) -> dict[str, float]:
    """Flat numbers of attach_openset's report for MLflow: openset_threshold, openset_heldout_auroc,
    openset_val_known_kept, openset_test_known_kept."""
    if not report or "detector" not in report:
        return {}
    out = {"openset_threshold": report["threshold"], "openset_heldout_auroc": report["heldout_auroc"],
           "openset_val_known_kept": report["selection"].get("val_known_kept"),
           "openset_test_known_kept": report.get("test_known_kept")}
    return {k: float(v) for k, v in out.items() if v is not None}
