"""Multi-label estimators: one-vs-rest logistic regression in torch (one L-BFGS over all classes), its blend
with the zero-shot scores, and the per-class calibration and thresholds chosen on val.

The objective of class c is scikit-learn's binary `LogisticRegression(C=C_c)`: the sum over images of the
binary cross-entropy of its logit plus ||w_c||^2 / (2 C_c), intercept not penalised; the classes are
independent, so their sum is minimised in one L-BFGS (divided by n, as toolkit.fitting.logreg does). C is
swept over a log grid on train, every class scored on val at every C (warm starts from the smaller C); one
shared C (the best val mAP) is kept, or with `per_class_c` each class keeps the C of its best val average
precision (ties within 0.001 to the lower val log loss). With `center` the features are first re-centred on the
training mean and re-normalized (the head keeps the mean). Shared C and centring gave the best val and test
attribute mAP of the variants tried on the demo suite (BENCHMARKS.md, "Multi-label"). No refit on train + val: the val scores must stay
honest, since the calibration and thresholds are chosen on them.

Estimators follow heads/base.py's contract: hyper-parameters in `__init__`, `fit(X, Y, X_val, Y_val,
classes=..., identity=...)` returns the fitted head and sets `result_` (chosen values, the sweep, val logits).
Here Y are (n, C) 0/1 targets, not class indices. torch is imported inside functions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from toolkit.errors import ConfigError, DataError
from toolkit.heads.multilabel import MultiLabelHead, MultiLabelLinearHead, MultiLabelZeroShotHead, recenter, sigmoid

TOL = 1e-4
DEFAULT_GRID = tuple(float(c) for c in np.logspace(-1, 3, 9))  # unit-norm features need large weights


@dataclass
class MultiLabelFit:
    """What a multi-label fit chose: the head, its hyper-parameters, the sweep, and val logits (n_val, C)."""

    head: MultiLabelHead
    params: dict[str, Any]
    sweep: list[dict[str, Any]] = field(default_factory=list)
    val_logits: Optional[np.ndarray] = None


# ---------------------------------------------------------------- one-vs-rest logistic regression

def _lbfgs_ovr(X, Y, W, b, penalty, max_iter: int, tol: float) -> int:
    """Minimise mean_i sum_c BCE(x_i w_c + b_c, y_ic) + sum_c penalty_c ||w_c||^2 in place; (iterations)."""
    import torch

    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=tol,
                            tolerance_change=1e-12, history_size=10, line_search_fn="strong_wolfe")
    n = X.shape[0]

    def closure():
        with torch.no_grad():
            z = torch.addmm(b, X, W.t())
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, Y, reduction="sum").double() / n
            loss = loss + (penalty[:, None] * W.double().pow(2)).sum()
            residual = (torch.sigmoid(z) - Y) / n  # d loss / d logits
            W.grad = residual.t() @ X + 2 * penalty[:, None].to(W.dtype) * W
            b.grad = residual.sum(dim=0)
        return loss

    opt.step(closure)
    return int(opt.state[W].get("n_iter", 0))


def fit_ovr(X: np.ndarray, Y: np.ndarray, C: float | np.ndarray, init=None, max_iter: int = 500, tol: float = TOL,
            device: str = "cpu") -> tuple[np.ndarray, np.ndarray, int]:
    """One-vs-rest logistic regression at C (one value, or one per class) on (n, D) X and (n, K) 0/1 Y.
    Returns (coef (K, D), intercept (K,), iterations); `init` (coef, intercept) warm-starts."""
    import torch

    dev = torch.device(device)
    Xt = torch.as_tensor(np.ascontiguousarray(X, np.float32), device=dev)
    Yt = torch.as_tensor(np.ascontiguousarray(Y, np.float32), device=dev)
    K = Yt.shape[1]
    Cv = np.broadcast_to(np.asarray(C, np.float64), (K,))
    penalty = torch.as_tensor(1.0 / (2 * Cv * len(X)), dtype=torch.float64, device=dev)
    if init is None:
        W, b = torch.zeros(K, Xt.shape[1], device=dev), torch.zeros(K, device=dev)
    else:
        W, b = (torch.as_tensor(np.array(a, np.float32), device=dev) for a in init)
    before = torch.get_num_threads()
    if dev.type == "cpu":  # one thread: on a shared CPU 2 OpenMP threads spin, many times slower (BENCHMARKS.md)
        torch.set_num_threads(1)
    try:
        n_iter = _lbfgs_ovr(Xt, Yt, W, b, penalty, max_iter, tol)
    finally:
        torch.set_num_threads(before)
    return W.cpu().numpy(), b.cpu().numpy(), n_iter


def _val_scores(logits: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-class AP (K,), NaN without positives; per-class mean log loss (K,)) of val logits."""
    from toolkit.evaluation.multilabel import average_precision

    p = np.clip(sigmoid(logits), 1e-12, 1 - 1e-12)
    loss = -(Y * np.log(p) + (1 - Y) * np.log(1 - p)).mean(axis=0)
    return average_precision(logits, Y), loss


class OneVsRestLogReg:
    """One-vs-rest logistic regression with C chosen on val (per class or shared); see the module docstring."""

    def __init__(self, c_grid: Sequence[float] = DEFAULT_GRID, per_class_c: bool = False, max_iter: int = 500,
                 tol: float = TOL, device: str = "cpu", center: bool = False):
        self.c_grid, self.per_class_c, self.max_iter, self.tol, self.device = c_grid, per_class_c, max_iter, tol, device
        self.center = center

    def fit(self, X, Y, X_val, Y_val, classes: Sequence[str], identity=None, **_: Any) -> MultiLabelLinearHead:
        grid = sorted({float(c) for c in self.c_grid})
        if not grid or grid[0] <= 0:
            raise ConfigError(f"c_grid {grid} needs positive values (the inverse L2 strength), e.g. 0.1,1,10")
        check_targets(Y, classes, "train")
        mu = np.asarray(X, np.float32).mean(axis=0) if self.center else None  # the head re-centres on it
        X, X_val = recenter(X, mu), recenter(X_val, mu)
        solutions, aps, losses, sweep, init = [], [], [], [], None
        for c in grid:
            coef, icpt, n_iter = fit_ovr(X, Y, c, init, self.max_iter, self.tol, self.device)
            init = (coef, icpt)
            ap, loss = _val_scores(X_val @ coef.T + icpt, Y_val)
            solutions.append(init), aps.append(ap), losses.append(loss)
            sweep.append({"param": "C", "value": c, "val_mAP": _nanmean(ap), "val_loss": float(loss.mean()),
                          "n_iter": n_iter})
        aps_m, loss_m = np.nan_to_num(np.asarray(aps), nan=0.0), np.asarray(losses)  # (n_C, K)
        if self.per_class_c:
            pick = [_best(aps_m[:, k], loss_m[:, k]) for k in range(len(classes))]
        else:
            pick = [_best(aps_m.mean(axis=1), loss_m.mean(axis=1))] * len(classes)
        coef = np.stack([solutions[i][0][k] for k, i in enumerate(pick)])
        icpt = np.asarray([solutions[i][1][k] for k, i in enumerate(pick)])
        chosen = [grid[i] for i in pick]
        params = {"C": chosen if self.per_class_c else chosen[0], "per_class_c": self.per_class_c,
                  "centered": self.center, "solver": "torch-lbfgs", "n_candidates": len(grid), "refit": "none"}
        head = MultiLabelLinearHead(list(classes), coef, icpt, mu, identity=identity, method="ovr-logreg",
                                    params=params)
        self.result_ = MultiLabelFit(head, params, sweep, X_val @ coef.T + icpt)  # X_val is re-centred already
        return head


def _best(ap: np.ndarray, loss: np.ndarray) -> int:
    near = np.flatnonzero(ap >= ap.max() - 1e-3)
    return int(near[np.argmin(loss[near])])


def _nanmean(a: np.ndarray) -> Optional[float]:
    return float(np.nanmean(a)) if np.isfinite(a).any() else None


class MultiLabelBlend:
    """alpha * one-vs-rest logits + (1 - alpha) * zero-shot logits, alpha chosen on val mAP (a linear head)."""

    def __init__(self, base: Optional[OneVsRestLogReg] = None, alphas: Sequence[float] = tuple(np.linspace(0, 1, 11))):
        self.base, self.alphas = base or OneVsRestLogReg(), alphas

    def fit(self, X, Y, X_val, Y_val, classes: Sequence[str], zeroshot: Optional[MultiLabelZeroShotHead] = None,
            identity=None) -> MultiLabelLinearHead:
        if zeroshot is None:
            raise ConfigError("the blend builds on the zero-shot head; give prompts for the class names")
        if getattr(self.base, "center", False):
            raise ConfigError("the blend mixes weights over the raw features; give it an uncentred base",
                              field="method")
        probe = self.base.fit(X, Y, X_val, Y_val, classes, identity)
        zw, zb = zeroshot.linear_form()
        sweep = []
        for a in self.alphas:
            z = X_val @ (a * probe.coef_ + (1 - a) * zw).T + a * probe.intercept_
            sweep.append({"param": "alpha", "value": float(a), "val_mAP": _nanmean(_val_scores(z, Y_val)[0])})
        best = max(sweep, key=lambda s: (s["val_mAP"] or 0.0, s["value"]))["value"]
        coef, icpt = best * probe.coef_ + (1 - best) * zw, best * probe.intercept_ + (1 - best) * zb
        params = {**self.base.result_.params, "alpha": best}
        head = MultiLabelLinearHead(list(classes), coef, icpt, identity=identity, method="blend", params=params)
        self.result_ = MultiLabelFit(head, params, self.base.result_.sweep + sweep, head.decision_function(X_val))
        return head


def check_targets(Y: np.ndarray, classes: Sequence[str], split: str) -> None:
    """DataError when a class has no positive (or no negative) image in `split`: one-vs-rest can't learn it."""
    Y = np.asarray(Y)
    for k, c in enumerate(classes):
        if not Y[:, k].any():
            raise DataError(f"label '{c}' has no positive image in {split}; add {split} images that carry it")


# ---------------------------------------------------------------- per-class calibration and thresholds

def fit_class_calibration(logits: np.ndarray, Y: np.ndarray, method: str = "platt") -> tuple[np.ndarray, np.ndarray]:
    """Per-class (scale (K,), bias (K,)) minimising the val BCE of sigmoid(scale * logit + bias): "temperature"
    fits the scale alone (1/T, bias 0), "platt" both; "none" gives (1, 0). A class without positives or
    negatives on val keeps (1, 0). The targets are Platt's smoothed ones, (N+ + 1) / (N+ + 2) and 1 / (N- + 2),
    so a separable val split can't push the scale to infinity."""
    from scipy.optimize import minimize

    K = logits.shape[1]
    scale, bias = np.ones(K), np.zeros(K)
    if method == "none":
        return scale, bias
    for k in range(K):
        z, y = np.asarray(logits[:, k], np.float64), np.asarray(Y[:, k], np.float64)
        if y.min() == y.max():
            continue
        n_pos = y.sum()  # Platt's smoothed targets: a separable val set can't push the scale to infinity
        y = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (len(y) - n_pos + 2))

        def nll(v):  # mean BCE with logits m = a z + c, and its gradient in (a[, c])
            m = v[0] * z + (v[1] if method == "platt" else 0.0)
            g = sigmoid(m) - y
            grad = [np.mean(g * z)] + ([np.mean(g)] if method == "platt" else [])
            return float(np.mean(np.logaddexp(0, m) - y * m)), np.asarray(grad)

        res = minimize(nll, np.array([1.0, 0.0] if method == "platt" else [1.0]), jac=True, method="L-BFGS-B",
                       bounds=[(1e-4, 1e4)] + ([(None, None)] if method == "platt" else []))
        scale[k] = res.x[0]
        bias[k] = res.x[1] if method == "platt" else 0.0
    return scale, bias


def finish_head(head: MultiLabelHead, val_logits: np.ndarray, Y_val: np.ndarray, calibration: str = "platt",
                target_precision: Optional[float] = None) -> MultiLabelHead:
    """The head with per-class calibration fitted on val logits, then per-class thresholds chosen on the
    calibrated val probabilities (best F1, or the lowest reaching `target_precision`)."""
    from toolkit.evaluation.multilabel import choose_thresholds

    if calibration not in ("none", "temperature", "platt"):
        raise ConfigError(f"class calibration {calibration!r} is unknown; use none, temperature or platt",
                          field="class_calibration")
    scale, bias = fit_class_calibration(val_logits, Y_val, calibration)
    head = head.with_calibration(calibration, scale, bias)
    proba = sigmoid(scale * val_logits + bias)
    th, rule = choose_thresholds(proba, Y_val, target_precision=target_precision)
    rule["unreachable"] = [head.classes_[k] for k in rule["unreachable"]]
    return head.with_thresholds(th, {**rule, "chosen_on": "val"})
