"""Every head method fitted on arrays: logreg and linear probes, the cache head (Tip-Adapter, -F), WiSE-FT
blending, and `auto`, which fits the candidates and keeps the best on val.

`fit_head(method, train, val, zeroshot, cfg, identity)` is what train_probe calls; the arrays are (X, y)
pairs of L2-normalized features and class indices 0..C-1, and `zeroshot` is the zero-shot head with its
classes in that order (`zeroshot_in_order`). Hyper-parameters are always chosen on `val`.

- blend (WiSE-FT, Wortsman et al. 2022, for linear heads): logits = (1 - alpha) * zero-shot + alpha * probe.
  Both are linear in the features, so the blend is one linear head with interpolated weights; alpha = 0 is the
  zero-shot head, 1 the probe. The probe is fitted on train only (no refit on val, which picks alpha).
- auto: zero-shot and cfg.auto_candidates are fitted and scored on val; the best val accuracy wins and ties
  go to the earlier candidate, zero-shot first, so the result is never worse than zero-shot on the data it
  was chosen with. When val has fewer than cfg.auto_min_val_per_class images of some class, the candidates
  are scored by stratified k-fold over train + val instead (each fold's candidates pick their own
  hyper-parameters on the held-out fold, as Tip-Adapter and the CLIP probe do on val), and the winner is
  then fitted on train with val, like `--method <winner>`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from toolkit.config import ProbeConfig
from toolkit.errors import ConfigError
from toolkit.heads.base import SavedHead, softmax

CANDIDATES = ("zeroshot", "logreg", "linear", "cache", "cache-f", "blend")


@dataclass
class HeadFit:
    """A fitted head, the hyper-parameters it chose, its sweep, and its val probabilities (n_val, C)."""

    head: SavedHead
    params: dict[str, Any]
    sweep: list[dict[str, Any]]
    val_proba: np.ndarray
    selection: Optional[dict[str, Any]] = None  # auto: how the winner was chosen, every candidate's score


def zeroshot_in_order(head, classes: Sequence[str]):
    """The zero-shot head with its rows in `classes` order (same labels, templates, logit scale)."""
    from toolkit.heads.zeroshot import ZeroShotHead

    order = [list(head.classes_).index(c) for c in classes]
    return ZeroShotHead(list(classes), head.templates, head.coef_[order], head.logit_scale, head.identity)


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(proba).argmax(axis=1) == y).mean()) if len(y) else 0.0


def fit_head(method: str, classes: Sequence[str], train: tuple[np.ndarray, np.ndarray],
             val: tuple[np.ndarray, np.ndarray], zeroshot, cfg: ProbeConfig, identity=None, progress: bool = False,
             c_grid: Optional[Sequence[float]] = None, refit: Optional[bool] = None) -> HeadFit:
    """Fit one method ("logreg", "linear", "cache" (cfg.finetune: Tip-Adapter-F), "cache-f", "blend", "auto",
    "zeroshot") on `train`, choosing its hyper-parameters on `val`. `refit` (logreg): refit on train + val at
    the chosen C; default: unless few-shot. `zeroshot` (classes in `classes` order) may be None for logreg
    and linear with random init."""
    if method == "auto":
        return fit_auto(classes, train, val, zeroshot, cfg, identity, progress)
    needs_zs = method in ("zeroshot", "cache", "cache-f", "blend") or cfg.init == "zeroshot"
    if needs_zs and zeroshot is None:
        raise ConfigError(f"method '{method}' builds on the zero-shot classifier; give prompts for the class names")
    if method == "zeroshot":
        head = zeroshot_head(zeroshot, identity)
        return HeadFit(head, {}, [], head.predict_proba(val[0]))
    if method in ("cache", "cache-f"):
        return _fit_cache(train, val, zeroshot, cfg.model_copy(update={"finetune": cfg.finetune or
                                                                        method == "cache-f"}), identity)
    if method == "blend":
        return fit_blend(train, val, zeroshot, cfg, identity, progress, c_grid)
    from toolkit.heads.linear import LinearProbe

    fit = _fit_linear_probe(method, len(classes), train, val, zeroshot, cfg, progress, c_grid, refit)
    return HeadFit(LinearProbe(classes, fit.coef, fit.intercept, identity, method, fit.params), fit.params,
                   fit.sweep, fit.val_proba)


def zeroshot_head(zeroshot, identity=None, params: Optional[dict[str, Any]] = None):
    """The zero-shot classifier as a head of its own (a copy: same weights, templates and scale)."""
    from toolkit.heads.zeroshot import ZeroShotHead

    return ZeroShotHead(zeroshot.classes_, zeroshot.templates, zeroshot.coef_, zeroshot.logit_scale,
                        identity if identity is not None else zeroshot.identity, "zeroshot", params)


def _fit_linear_probe(method: str, n_classes: int, train, val, zeroshot, cfg: ProbeConfig, progress: bool,
                      c_grid: Optional[Sequence[float]], refit: Optional[bool]):
    """FitResult of a logreg (torch L-BFGS, C sweep) or linear (Lightning; zero-shot init per cfg.init) probe."""
    if method == "logreg":
        from toolkit.fitting.logreg import fit_logreg

        # few-shot: the head must only ever fit K examples per class, so no refit on the (full) val split
        return fit_logreg(*train, *val, cfg, c_grid or cfg.c_grid, refit=not cfg.fewshot if refit is None else refit)
    if method != "linear":
        raise ConfigError(f"unknown head method '{method}'; choose from {', '.join(CANDIDATES)} or auto")
    from toolkit.fitting.trainer import fit_linear

    init = zeroshot.coef_ * zeroshot.logit_scale if cfg.init == "zeroshot" else None
    return fit_linear(*train, *val, n_classes, cfg, init_weight=init, progress=progress)


def _fit_cache(train, val, zeroshot, cfg: ProbeConfig, identity) -> HeadFit:
    from toolkit.heads.cache import CacheHead, fit_cache

    fit = fit_cache(*train, *val, zeroshot.coef_, zeroshot.logit_scale, cfg, finetune=cfg.finetune)
    head = CacheHead(zeroshot.classes_, zeroshot.coef_, zeroshot.logit_scale, fit.keys, fit.values, fit.alpha,
                     fit.beta, identity, "cache", fit.params)
    return HeadFit(head, fit.params, fit.sweep, fit.val_proba)


# ---------------------------------------------------------------- blend (WiSE-FT)

def blend_weights(zeroshot, coef: np.ndarray, intercept: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights of (1 - alpha) * zero-shot logits + alpha * (features @ coef.T + intercept): (C, D), (C,)."""
    zs = zeroshot.logit_scale * zeroshot.coef_
    return ((1 - alpha) * zs + alpha * coef).astype(np.float32), (alpha * intercept).astype(np.float32)


def fit_blend(train, val, zeroshot, cfg: ProbeConfig, identity=None, progress: bool = False,
              c_grid: Optional[Sequence[float]] = None) -> HeadFit:
    """A cfg.blend_base probe fitted on train (linear: from the zero-shot init), blended with the zero-shot
    head at the alpha of cfg.blend_alphas with the best val accuracy (ties: lower val loss, then smaller alpha)."""
    from toolkit.heads.linear import LinearProbe

    base_cfg = cfg.model_copy(update={"init": "zeroshot" if cfg.blend_base == "linear" else cfg.init})
    base = _fit_linear_probe(cfg.blend_base, len(zeroshot.classes_), train, val, zeroshot, base_cfg, progress,
                             c_grid, refit=False)
    X_val, y_val = val
    rows = []
    for alpha in sorted(cfg.blend_alphas):
        coef, intercept = blend_weights(zeroshot, base.coef, base.intercept, alpha)
        proba = softmax(X_val @ coef.T + intercept)
        loss = float(-np.log(np.clip(proba[np.arange(len(y_val)), y_val], 1e-12, None)).mean())
        rows.append({"param": "alpha", "value": float(alpha), "val_accuracy": accuracy(proba, y_val),
                     "val_loss": loss, "proba": proba})
    best = min(rows, key=lambda r: (-r["val_accuracy"], r["val_loss"], r["value"]))
    alpha = best["value"]
    coef, intercept = blend_weights(zeroshot, base.coef, base.intercept, alpha)
    params = {"alpha": alpha, "base": cfg.blend_base, **{f"base_{k}": v for k, v in base.params.items()}}
    head = LinearProbe(zeroshot.classes_, coef, intercept, identity, "blend", params)
    sweep = [{k: v for k, v in r.items() if k != "proba"} for r in rows]
    return HeadFit(head, params, sweep, best["proba"])


# ---------------------------------------------------------------- auto

def _candidate(name: str, train, val, zeroshot, cfg: ProbeConfig, identity, progress: bool,
               refit: Optional[bool] = None) -> HeadFit:
    """One auto candidate: "linear" starts from the zero-shot init, "cache-f" is the fine-tuned cache."""
    if name == "linear":
        cfg = cfg.model_copy(update={"init": "zeroshot"})
    elif name in ("logreg", "cache", "blend"):
        cfg = cfg.model_copy(update={"init": "random", "finetune": False})
    fit = fit_head(name, zeroshot.classes_, train, val, zeroshot, cfg, identity, progress, refit=refit)
    if name == "linear":
        fit.params["init"] = "zeroshot"
    return fit


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(n,) fold index 0..k-1 per row; each class's rows are shuffled (seeded) and dealt round-robin."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        fold[rows] = np.arange(len(rows)) % k
    return fold


def _pick(scores: dict[str, float]) -> str:
    """Best score; ties go to the earlier candidate (zero-shot is first)."""
    return max(scores, key=lambda n: (scores[n], -list(scores).index(n)))


def fit_candidates(names: Sequence[str], classes: Sequence[str], train, val, zeroshot, cfg: ProbeConfig,
                   identity=None, progress: bool = False) -> dict[str, tuple[HeadFit, float]]:
    """Each candidate fitted on train with its hyper-parameters chosen on val: {name: (HeadFit, fit seconds)}."""
    out = {}
    for name in names:
        t0 = time.perf_counter()
        out[name] = (_candidate(name, train, val, zeroshot, cfg, identity, progress), time.perf_counter() - t0)
    return out


def choose(fits: dict[str, tuple[HeadFit, float]], y_val: np.ndarray) -> HeadFit:
    """auto among fitted candidates (zero-shot first): the best val accuracy; see `fit_auto`."""
    cands = {n: {"val_accuracy": accuracy(f.val_proba, y_val), "fit_s": round(s, 3)} for n, (f, s) in fits.items()}
    chosen = _pick({n: c["val_accuracy"] for n, c in cands.items()})
    return _selected(fits[chosen][0], chosen, {"mode": "val", "folds": None, "chosen": chosen, "candidates": cands})


def _selected(fit: HeadFit, chosen: str, selection: dict[str, Any]) -> HeadFit:
    """The winner's HeadFit, marked as auto's choice (the head's method is the winner's own)."""
    extra = {"chosen": chosen, "selection": selection["mode"]}
    fit.head.params = {**fit.head.params, **extra}
    return HeadFit(fit.head, {**fit.params, **extra}, fit.sweep, fit.val_proba, selection)


def fit_auto(classes: Sequence[str], train, val, zeroshot, cfg: ProbeConfig, identity=None,
             progress: bool = False) -> HeadFit:
    """Every candidate (zero-shot first, then cfg.auto_candidates), the best on val or by k-fold; see the
    module docstring. The returned HeadFit has `selection`: {mode, folds, chosen, candidates: {name: {...}}}."""
    if zeroshot is None:
        raise ConfigError("method 'auto' compares against the zero-shot classifier; give prompts for the class names")
    names = list(dict.fromkeys(["zeroshot", *cfg.auto_candidates]))
    n_classes = len(classes)
    per_class_val = int(np.bincount(val[1], minlength=n_classes).min())
    k = min(cfg.auto_folds, int(np.bincount(np.concatenate([train[1], val[1]]), minlength=n_classes).min()))
    if per_class_val >= cfg.auto_min_val_per_class or k < 2:
        fit = choose(fit_candidates(names, classes, train, val, zeroshot, cfg, identity, progress), val[1])
    else:
        cands = _kfold_scores(names, train, val, zeroshot, cfg, identity, progress, k)
        chosen = _pick({n: c["val_accuracy"] for n, c in cands.items()})
        fit = _selected(_candidate(chosen, train, val, zeroshot, cfg, identity, progress), chosen,
                        {"mode": f"{k}-fold", "folds": k, "chosen": chosen, "candidates": cands})
    fit.selection["min_val_per_class"] = per_class_val
    return fit


def _kfold_scores(names: list[str], train, val, zeroshot, cfg: ProbeConfig, identity, progress: bool,
                  k: int) -> dict[str, dict[str, Any]]:
    """Mean held-out accuracy of each candidate over k stratified folds of train + val."""
    X = np.concatenate([train[0], val[0]])
    y = np.concatenate([train[1], val[1]])
    fold = stratified_folds(y, k, cfg.seed)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        t0, accs = time.perf_counter(), []
        for f in range(k):
            tr, te = fold != f, fold == f
            fit = _candidate(name, (X[tr], y[tr]), (X[te], y[te]), zeroshot, cfg, identity, progress, refit=False)
            accs.append(accuracy(fit.val_proba, y[te]))
        out[name] = {"val_accuracy": float(np.mean(accs)), "fold_accuracies": accs,
                     "fit_s": round(time.perf_counter() - t0, 3)}
    return out
