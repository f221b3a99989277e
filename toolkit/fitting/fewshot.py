"""Estimators that make heads, one per method (scikit-learn style): logreg and linear probes, the cache head
(Tip-Adapter, -F), WiSE-FT blending, the zero-shot head itself, and `auto`, which fits the candidates and keeps
the best on val.

An estimator keeps its hyper-parameters (a ProbeConfig, plus a few call options) from `__init__` and never
changes them; `fit(X, y, X_val, y_val, classes=..., zeroshot=..., identity=...)` returns the fitted head and sets
`result_` (a FitResult: the head, the chosen hyper-parameters, the sweep, the val probabilities). X are (n, D)
L2-normalized features, y class indices into `classes`; `zeroshot` is the zero-shot head with its classes in
that order (`ZeroShotHead.in_order`). Hyper-parameters are always chosen on val. `fit_head(method, ...)` is the
same as a function returning the FitResult (what train_probe and the scripts call).

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
from dataclasses import replace
from typing import Any, Optional, Sequence

import numpy as np

from toolkit.config import ProbeConfig
from toolkit.errors import ConfigError
from toolkit.fitting.result import FitResult
from toolkit.heads.base import softmax

CANDIDATES = ("zeroshot", "logreg", "linear", "cache", "cache-f", "blend")


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(proba).argmax(axis=1) == y).mean()) if len(y) else 0.0


class Estimator:
    """Base of the estimators: `__init__` stores the hyper-parameters, `fit` returns a head and sets `result_`."""

    method = ""
    needs_zeroshot = False

    def __init__(self, cfg: Optional[ProbeConfig] = None, *, c_grid: Optional[Sequence[float]] = None,
                 refit: Optional[bool] = None, progress: bool = False):
        self.cfg = cfg if cfg is not None else ProbeConfig()
        self.c_grid, self.refit, self.progress = c_grid, refit, progress

    def fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, *, classes: Sequence[str],
            zeroshot=None, identity=None):
        """Fit on (X, y), choosing hyper-parameters on (X_val, y_val); returns the fitted head."""
        if (self.needs_zeroshot or self.cfg.init == "zeroshot") and zeroshot is None:
            raise ConfigError(f"method '{self.method}' builds on the zero-shot classifier; give prompts for the "
                              "class names")
        self.result_ = self._fit((X, y), (X_val, y_val), list(classes), zeroshot, identity)
        return self.result_.head

    def _fit(self, train, val, classes: list[str], zeroshot, identity) -> FitResult:
        raise NotImplementedError


class ZeroShotEstimator(Estimator):
    """The zero-shot classifier as a head of its own (a new head: same weights, templates and scale)."""

    method, needs_zeroshot = "zeroshot", True

    def _fit(self, train, val, classes, zeroshot, identity) -> FitResult:
        from toolkit.heads.zeroshot import ZeroShotHead

        head = ZeroShotHead(zeroshot.classes_, zeroshot.templates, zeroshot.coef_, zeroshot.logit_scale,
                            identity if identity is not None else zeroshot.identity, "zeroshot")
        return FitResult(params={}, val_proba=head.predict_proba(val[0]), head=head)


class LogregEstimator(Estimator):
    """L-BFGS logistic regression (torch), C swept on val (toolkit.fitting.logreg); refit on train + val at the
    chosen C unless few-shot (the head must only ever see K examples per class) or `refit` says otherwise."""

    method = "logreg"

    def _linear_fit(self, train, val, n_classes: int, zeroshot) -> FitResult:
        from toolkit.fitting.logreg import fit_logreg

        refit = not self.cfg.fewshot if self.refit is None else self.refit
        return fit_logreg(*train, *val, self.cfg, self.c_grid or self.cfg.c_grid, refit=refit)

    def _fit(self, train, val, classes, zeroshot, identity) -> FitResult:
        from toolkit.heads.linear import LinearProbe

        fit = self._linear_fit(train, val, len(classes), zeroshot)
        return fit.with_head(LinearProbe(classes, fit.coef, fit.intercept, identity, self.method, fit.params))


class LinearEstimator(LogregEstimator):
    """A linear layer trained with Lightning (AdamW, weight decay on val, early stopping); from the zero-shot
    weights with cfg.init "zeroshot" (toolkit.fitting.trainer)."""

    method = "linear"

    def _linear_fit(self, train, val, n_classes: int, zeroshot) -> FitResult:
        from toolkit.fitting.trainer import fit_linear

        init = zeroshot.coef_ * zeroshot.logit_scale if self.cfg.init == "zeroshot" else None
        return fit_linear(*train, *val, n_classes, self.cfg, init_weight=init, progress=self.progress)


class CacheEstimator(Estimator):
    """Tip-Adapter's cache head (alpha, beta on val); Tip-Adapter-F (trained keys) with `finetune` or
    cfg.finetune (toolkit.fitting.tip_adapter)."""

    method, needs_zeroshot = "cache", True

    def __init__(self, cfg: Optional[ProbeConfig] = None, *, finetune: Optional[bool] = None, **options: Any):
        super().__init__(cfg, **options)
        self.finetune = self.cfg.finetune if finetune is None else finetune

    def _fit(self, train, val, classes, zeroshot, identity) -> FitResult:
        from toolkit.fitting.tip_adapter import fit_cache
        from toolkit.heads.cache import CacheHead

        fit = fit_cache(*train, *val, zeroshot.coef_, zeroshot.logit_scale, self.cfg, finetune=self.finetune)
        s = fit.learned
        head = CacheHead(zeroshot.classes_, zeroshot.coef_, zeroshot.logit_scale, s["keys_"], s["values_"],
                         s["alpha_"], s["beta_"], identity, "cache", fit.params)
        return fit.with_head(head)


def blend_weights(zeroshot, coef: np.ndarray, intercept: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights of (1 - alpha) * zero-shot logits + alpha * (features @ coef.T + intercept): (C, D), (C,)."""
    zs = zeroshot.logit_scale * zeroshot.coef_
    return ((1 - alpha) * zs + alpha * coef).astype(np.float32), (alpha * intercept).astype(np.float32)


class BlendEstimator(Estimator):
    """A cfg.blend_base probe fitted on train (linear: from the zero-shot init), blended with the zero-shot
    head at the alpha of cfg.blend_alphas with the best val accuracy (ties: lower val loss, then smaller alpha)."""

    method, needs_zeroshot = "blend", True

    def _fit(self, train, val, classes, zeroshot, identity) -> FitResult:
        from toolkit.heads.linear import LinearProbe

        cfg = self.cfg
        base_cfg = cfg.model_copy(update={"init": "zeroshot" if cfg.blend_base == "linear" else cfg.init})
        base_est = ESTIMATORS[cfg.blend_base](base_cfg, c_grid=self.c_grid, refit=False, progress=self.progress)
        base = base_est._linear_fit(train, val, len(zeroshot.classes_), zeroshot)
        X_val, y_val = val
        rows = []
        for alpha in sorted(cfg.blend_alphas):
            coef, intercept = blend_weights(zeroshot, base.coef, base.intercept, alpha)
            proba = softmax(X_val @ coef.T + intercept)
            loss = float(-np.log(np.clip(proba[np.arange(len(y_val)), y_val], 1e-12, None)).mean())
            rows.append({"param": "alpha", "value": float(alpha), "val_accuracy": accuracy(proba, y_val),
                         "val_loss": loss, "proba": proba})
        best = min(rows, key=lambda r: (-r["val_accuracy"], r["val_loss"], r["value"]))
        coef, intercept = blend_weights(zeroshot, base.coef, base.intercept, best["value"])
        params = {"alpha": best["value"], "base": cfg.blend_base, **{f"base_{k}": v for k, v in base.params.items()}}
        head = LinearProbe(zeroshot.classes_, coef, intercept, identity, "blend", params)
        sweep = [{k: v for k, v in r.items() if k != "proba"} for r in rows]
        return FitResult({"coef_": coef, "intercept_": intercept}, params, sweep, best["proba"], head)


# ---------------------------------------------------------------- auto

class AutoEstimator(Estimator):
    """Every candidate (zero-shot first, then cfg.auto_candidates), the best on val or by k-fold; see the module
    docstring. `result_.selection`: {mode, folds, chosen, candidates: {name: {...}}, min_val_per_class}."""

    method, needs_zeroshot = "auto", True

    def _fit(self, train, val, classes, zeroshot, identity) -> FitResult:
        cfg = self.cfg
        names = list(dict.fromkeys(["zeroshot", *cfg.auto_candidates]))
        n_classes = len(classes)
        per_class_val = int(np.bincount(val[1], minlength=n_classes).min())
        k = min(cfg.auto_folds, int(np.bincount(np.concatenate([train[1], val[1]]), minlength=n_classes).min()))
        if per_class_val >= cfg.auto_min_val_per_class or k < 2:
            fit = choose(fit_candidates(names, classes, train, val, zeroshot, cfg, identity, self.progress), val[1])
        else:
            cands = _kfold_scores(names, train, val, zeroshot, cfg, identity, self.progress, k)
            chosen = _pick({n: c["val_accuracy"] for n, c in cands.items()})
            fit = _selected(_candidate(chosen, train, val, zeroshot, cfg, identity, self.progress), chosen,
                            {"mode": f"{k}-fold", "folds": k, "chosen": chosen, "candidates": cands})
        return replace(fit, selection={**fit.selection, "min_val_per_class": per_class_val})


ESTIMATORS: dict[str, type[Estimator]] = {"zeroshot": ZeroShotEstimator, "logreg": LogregEstimator,
                                          "linear": LinearEstimator, "cache": CacheEstimator,
                                          "cache-f": CacheEstimator, "blend": BlendEstimator, "auto": AutoEstimator}


def estimator_for(method: str, cfg: ProbeConfig, **options: Any) -> Estimator:
    """The estimator of a method name ("cache-f": the cache estimator with fine-tuned keys)."""
    if method not in ESTIMATORS:
        raise ConfigError(f"unknown head method '{method}'; choose from {', '.join(CANDIDATES)} or auto",
                          field="method")
    if method in ("cache", "cache-f"):
        options["finetune"] = cfg.finetune or method == "cache-f"
    return ESTIMATORS[method](cfg, **options)


def fit_head(method: str, classes: Sequence[str], train: tuple[np.ndarray, np.ndarray],
             val: tuple[np.ndarray, np.ndarray], zeroshot, cfg: ProbeConfig, identity=None, progress: bool = False,
             c_grid: Optional[Sequence[float]] = None, refit: Optional[bool] = None) -> FitResult:
    """`estimator_for(method, cfg).fit(...)` on (X, y) pairs; returns its FitResult (the head in `.head`)."""
    est = estimator_for(method, cfg, c_grid=c_grid, refit=refit, progress=progress)
    est.fit(*train, *val, classes=classes, zeroshot=zeroshot, identity=identity)
    return est.result_


def _candidate(name: str, train, val, zeroshot, cfg: ProbeConfig, identity, progress: bool,
               refit: Optional[bool] = None) -> FitResult:
    """One auto candidate: "linear" starts from the zero-shot init, "cache-f" is the fine-tuned cache."""
    if name == "linear":
        cfg = cfg.model_copy(update={"init": "zeroshot"})
    elif name in ("logreg", "cache", "blend"):
        cfg = cfg.model_copy(update={"init": "random", "finetune": False})
    fit = fit_head(name, zeroshot.classes_, train, val, zeroshot, cfg, identity, progress, refit=refit)
    return replace(fit, params={**fit.params, "init": "zeroshot"}) if name == "linear" else fit


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
                   identity=None, progress: bool = False) -> dict[str, tuple[FitResult, float]]:
    """Each candidate fitted on train with its hyper-parameters chosen on val: {name: (FitResult, fit seconds)}."""
    out = {}
    for name in names:
        t0 = time.perf_counter()
        out[name] = (_candidate(name, train, val, zeroshot, cfg, identity, progress), time.perf_counter() - t0)
    return out


def choose(fits: dict[str, tuple[FitResult, float]], y_val: np.ndarray) -> FitResult:
    """auto among fitted candidates (zero-shot first): the best val accuracy; see AutoEstimator."""
    cands = {n: {"val_accuracy": accuracy(f.val_proba, y_val), "fit_s": round(s, 3)} for n, (f, s) in fits.items()}
    chosen = _pick({n: c["val_accuracy"] for n, c in cands.items()})
    return _selected(fits[chosen][0], chosen, {"mode": "val", "folds": None, "chosen": chosen, "candidates": cands})


def _selected(fit: FitResult, chosen: str, selection: dict[str, Any]) -> FitResult:
    """The winner's FitResult, marked as auto's choice (the head's method is the winner's own)."""
    extra = {"chosen": chosen, "selection": selection["mode"]}
    return replace(fit, head=fit.head.annotated(params=extra), params={**fit.params, **extra}, selection=selection)


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
