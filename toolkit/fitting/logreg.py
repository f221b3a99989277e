"""Multinomial logistic regression in torch: full-batch L-BFGS on scikit-learn's objective, and the C sweep.

The objective is scikit-learn's `LogisticRegression(C=C)`: the sum of per-sample cross-entropies plus
||W||^2 / (2C), intercept not penalised. It is minimised divided by n (the same minimiser, and a gradient
whose size doesn't grow with n, so one tolerance fits every data size). Two classes are fitted as two softmax
rows; scikit-learn fits one logistic row w with ||w||^2 / (2C), and since the softmax rows come out as -w/2,
+w/2 the same solution needs the softmax penalty at C/2. torch.optim.LBFGS with a strong-Wolfe line search
over float32 weights and features (the loss alone is summed in float64), on the GPU when there is one.

`fit_fixed_c` fits one C; `sweep_c` picks C as the CLIP paper does (a log-spaced grid on val, refinement
rounds that halve the log step around the best, a refit on train + val), each fit warm-started from the
solution at the nearest smaller C. torch is imported inside the functions, so importing this module costs
numpy only.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np

from toolkit.errors import ConfigError
from toolkit.heads.base import FitResult

if TYPE_CHECKING:
    import torch

    from toolkit.config import ProbeConfig

TOL = 1e-4  # L-BFGS stops when max |gradient| of the per-sample objective is below this (scikit-learn's tol)
FINAL_TOL = 1e-6  # the weights a sweep returns: 100x tighter, a few more iterations from the chosen C's solution
REFINE_ROUNDS = 3  # halvings of the log10 step around the best C, as in the CLIP paper's parametric search
HISTORY = 10  # L-BFGS memory: scikit-learn (scipy) keeps 10 pairs too
CPU_THREADS = 1  # on a shared CPU, 2 OpenMP threads spin while waiting: 4.5x slower (BENCHMARKS.md)


@dataclass
class LogregFit:
    """One fit at one C: softmax weights and how long L-BFGS took."""

    coef: np.ndarray  # (n_classes, D) float32
    intercept: np.ndarray  # (n_classes,) float32
    n_iter: int  # L-BFGS iterations
    n_evals: int  # objective + gradient evaluations (each is two passes over X)


def resolve_device(device: str = "auto") -> "torch.device":
    """'auto' -> cuda when available, else cpu; anything else is passed to torch.device ('cpu', 'cuda:1')."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)


@contextmanager
def _threads(device: "torch.device", n: int) -> Iterator[None]:
    """Run torch's CPU ops on `n` threads while fitting on the CPU (no-op on a GPU); restores the old count."""
    import torch

    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _loss_and_grad(X: "torch.Tensor", Y: "torch.Tensor", W: "torch.Tensor", b: "torch.Tensor", penalty: float):
    """Mean cross-entropy + penalty * ||W||^2 (penalty = 1 / (2 C n): scikit-learn's objective / n) and its
    gradients in W and b, written out: a quarter less CPU time than autograd. Y is one-hot (n, C)."""
    import torch

    n = X.shape[0]
    z = torch.addmm(b, X, W.t())  # (n, C) logits
    lse = torch.logsumexp(z, dim=1)
    # summed in float64: near the optimum steps change the loss by less than float32 resolves (1e-7 of it)
    loss = (lse - (z * Y).sum(dim=1)).double().mean() + penalty * W.double().pow(2).sum()
    residual = z.sub_(lse[:, None]).exp_().sub_(Y)  # softmax - one-hot = d(cross-entropy)/d(logits), in place
    return loss, torch.mm(residual.t(), X).div_(n).add_(W, alpha=2 * penalty), residual.sum(dim=0).div_(n)


def _lbfgs(X: "torch.Tensor", y: "torch.Tensor", W: "torch.Tensor", b: "torch.Tensor", C: float,
           max_iter: int, tol: float) -> tuple[int, int]:
    """Minimise the objective at C over (W, b) in place; y are class indices. Returns (iterations, evaluations)."""
    import torch

    n_classes = W.shape[0]
    penalty = 1.0 / (2 * (C / 2 if n_classes == 2 else C) * X.shape[0])
    Y = torch.nn.functional.one_hot(y, n_classes).to(X.dtype)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=tol,
                            tolerance_change=1e-12, history_size=HISTORY, line_search_fn="strong_wolfe")

    def closure():
        with torch.no_grad():
            loss, W.grad, b.grad = _loss_and_grad(X, Y, W, b, penalty)
        return loss

    opt.step(closure)
    state = opt.state[W]
    return int(state.get("n_iter", 0)), int(state.get("func_evals", 0))


def _params(init: Optional[tuple["torch.Tensor", "torch.Tensor"]], n_classes: int, dim: int, device):
    """Fresh tensors (W (C, D), b (C,)) to optimise: a copy of `init` (warm start), else zeros."""
    import torch

    if init is None:
        return torch.zeros(n_classes, dim, device=device), torch.zeros(n_classes, device=device)
    return init[0].detach().clone(), init[1].detach().clone()


def _tensors(X: np.ndarray, y: np.ndarray, device) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    return (torch.as_tensor(np.ascontiguousarray(X, np.float32), device=device),
            torch.as_tensor(np.asarray(y, np.int64), device=device))


def fit_fixed_c(X: np.ndarray, y: np.ndarray, C: float, n_classes: Optional[int] = None,
                init: Optional[tuple[np.ndarray, np.ndarray]] = None, device: str = "auto",
                max_iter: int = 1000, tol: float = TOL, threads: int = CPU_THREADS) -> LogregFit:
    """Logistic regression at one C on (n, D) features X and class indices y (0..n_classes-1).

    `init` (coef (C, D), intercept (C,)) warm-starts L-BFGS; without it the weights start at zero.
    Probabilities match scikit-learn's LogisticRegression(C=C) fitted on the same data (to the tolerance).
    """
    import torch

    n_classes = _n_classes(n_classes, y)
    dev = resolve_device(device)
    with _threads(dev, threads):
        Xt, yt = _tensors(X, y, dev)
        start = None if init is None else tuple(torch.as_tensor(np.asarray(a, np.float32), device=dev) for a in init)
        W, b = _params(start, n_classes, Xt.shape[1], dev)
        n_iter, n_evals = _lbfgs(Xt, yt, W, b, float(C), max_iter, tol)
    return LogregFit(W.detach().cpu().numpy(), b.detach().cpu().numpy(), n_iter, n_evals)


def _n_classes(n_classes: Optional[int], *ys: np.ndarray) -> int:
    n = int(max(int(np.max(y, initial=0)) for y in ys)) + 1 if n_classes is None else int(n_classes)
    return max(n, 2)


def _score(X: "torch.Tensor", y: "torch.Tensor", W: "torch.Tensor", b: "torch.Tensor"
           ) -> tuple[float, float, np.ndarray]:
    """(accuracy, mean log loss with probabilities clipped at 1e-12, (n, C) proba) of weights on (X, y)."""
    import math

    import torch

    with torch.no_grad():
        logp = torch.log_softmax(torch.addmm(b, X, W.t()), dim=1)
        nll = -logp.gather(1, y[:, None]).clamp_min(math.log(1e-12)).double().mean()
        correct = int((logp.argmax(dim=1) == y).sum())
        return correct / len(y), float(nll), logp.exp().cpu().numpy()


def log_grid(c_min: float, c_max: float, steps: int) -> list[float]:
    """`steps` log-spaced values from c_min to c_max, increasing."""
    return [float(c) for c in np.logspace(np.log10(c_min), np.log10(c_max), steps)]


def sweep_c(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, grid: Sequence[float],
            refit: bool = True, refine_rounds: int = REFINE_ROUNDS, n_classes: Optional[int] = None,
            device: str = "auto", max_iter: int = 1000, tol: float = TOL, final_tol: float = FINAL_TOL,
            threads: int = CPU_THREADS) -> FitResult:
    """Pick C on the validation split as in the CLIP paper, then fit the final weights at that C.

    Every C in `grid` is fitted on train (to `tol`) in increasing order and scored on val; then
    `refine_rounds` rounds try best * 10**(+-step) with the log10 step (the grid's smallest) halved each
    round. Each fit starts from the solution at the nearest smaller C tried. Ties in val accuracy go to the
    lower val log loss. The final fit, on train + val with `refit` (else train), starts from the chosen C's
    solution and runs to `final_tol`. y are class indices 0..n_classes-1.
    Returns a FitResult: coef (n_classes, D), intercept (n_classes,), params, the sweep, val proba.
    """
    import torch

    grid = sorted({float(c) for c in grid})
    if not grid or grid[0] <= 0:
        raise ConfigError(f"C grid {grid} needs positive values (the inverse L2 strength), e.g. --c-grid 0.01,0.1,1")
    n_classes = _n_classes(n_classes, y_train, y_val)
    dev = resolve_device(device)
    with _threads(dev, threads):
        path = _CPath(*_tensors(X_train, y_train, dev), *_tensors(X_val, y_val, dev), n_classes, max_iter, tol)
        best = _search(grid, path.tried, path.trial, refine_rounds)
        X, y = path.X, path.y
        if refit:
            X, y = torch.cat([path.X, path.X_val]), torch.cat([path.y, path.y_val])
        W, b = _params(path.solutions[best], n_classes, X.shape[1], dev)
        final_iter = _lbfgs(X, y, W, b, best, max_iter, final_tol)[0]
        coef, intercept = W.detach().cpu().numpy(), b.detach().cpu().numpy()
    sweep = [{"param": "C", "value": c, "val_accuracy": a, "val_loss": lo, "n_iter": path.n_iter[c]}
             for c, (a, lo, _) in sorted(path.tried.items())]
    params = {"C": best, "solver": "torch-lbfgs", "device": dev.type, "tol": tol, "final_tol": final_tol,
              "max_iter": max_iter, "n_iter": final_iter, "sweep_iter": sum(path.n_iter.values()),
              "n_candidates": len(path.tried), "refit": "train+val" if refit else "none"}
    return FitResult(coef, intercept, params, sweep, path.tried[best][2])


class _CPath:
    """Fits along the C path on one (train, val) pair, kept on the device; each C warm-starts from below."""

    def __init__(self, X, y, X_val, y_val, n_classes: int, max_iter: int, tol: float):
        self.X, self.y, self.X_val, self.y_val = X, y, X_val, y_val
        self.n_classes, self.max_iter, self.tol = n_classes, max_iter, tol
        self.tried: dict[float, tuple[float, float, np.ndarray]] = {}  # C -> (val accuracy, val loss, val proba)
        self.solutions: dict[float, tuple] = {}  # C -> (W, b) detached tensors
        self.n_iter: dict[float, int] = {}

    def trial(self, c: float) -> None:
        below = [t for t in self.solutions if t < c]
        W, b = _params(self.solutions[max(below)] if below else None, self.n_classes, self.X.shape[1], self.X.device)
        self.n_iter[c] = _lbfgs(self.X, self.y, W, b, c, self.max_iter, self.tol)[0]
        self.solutions[c] = (W.detach(), b.detach())
        self.tried[c] = _score(self.X_val, self.y_val, W, b)


def _search(grid: list[float], tried: dict, trial, refine_rounds: int) -> float:
    """Run `trial` over the grid, then the refinement rounds; returns the best C: among the Cs within one val
    image of the best val accuracy, the one of lowest val loss (a one-image lead is noise; a C that leads by it
    with near-uniform probabilities was seen picked over one with a tenth of the loss)."""
    def best() -> float:
        top = max(acc for acc, _, _ in tried.values())
        n_val = max(len(next(iter(tried.values()))[2]), 1)
        near = [c for c in tried if tried[c][0] >= top - 1.0 / n_val - 1e-12]
        return min(near, key=lambda c: (tried[c][1], -tried[c][0]))

    for c in grid:
        trial(c)
    step = float(np.diff(np.log10(grid)).min()) if len(grid) > 1 else 0.0
    for _ in range(refine_rounds if step > 0 else 0):
        step /= 2
        centre = best()
        for c in (centre * 10 ** -step, centre * 10 ** step):
            if c not in tried:
                trial(c)
    return best()


# ---------------------------------------------------------------- the probe's entry point

def fit_logreg(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
               cfg: ProbeConfig, c_grid: Optional[Sequence[float]] = None, refit: bool = True) -> FitResult:
    """L-BFGS logistic regression (scikit-learn's objective, fitted in torch) with C picked as in the CLIP paper.

    A log-spaced sweep of C (cfg.c_min..cfg.c_max, cfg.c_steps values, or `c_grid`) on the validation
    split, then 3 rounds that try C * 10**(+-step) around the best with the step halved each round, then
    (with `refit`) a refit at the chosen C on train + val. y are class indices 0..C-1. Ties in validation
    accuracy go to the lower validation log loss. On the GPU when there is one; see toolkit.fitting.logreg.
    """
    grid = c_grid if c_grid else log_grid(cfg.c_min, cfg.c_max, cfg.c_steps)
    return sweep_c(X_train, y_train, X_val, y_val, grid, refit=refit, max_iter=cfg.max_iter)
