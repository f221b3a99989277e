"""Multinomial logistic regression in torch: full-batch L-BFGS on scikit-learn's objective, and the C sweep.

The objective is scikit-learn's `LogisticRegression(C=C)`: the sum of per-sample cross-entropies plus
||W||^2 / (2C), intercept not penalised. It is minimised divided by n (the same minimiser, and a gradient
whose size doesn't grow with n, so one tolerance fits every data size). Two classes are fitted as two softmax
rows; scikit-learn fits one logistic row w with ||w||^2 / (2C), and since the softmax rows come out as -w/2,
+w/2 the same solution needs the softmax penalty at C/2. Float32 weights and features (the loss alone is
summed in float64), on the GPU when there is one.

`fit_fixed_c` fits one C (torch.optim.LBFGS, strong-Wolfe line search); `sweep_c` picks C as the CLIP paper
does (a log-spaced grid on val, refinement rounds that halve the log step around the best, a refit on
train + val). Its fits share one L-BFGS memory along the path (toolkit.fitting.lbfgs): each C starts from
the nearest smaller C's weights and curvature pairs, so it costs a few evaluations, not a fit from scratch.
It fits re-centred features and an intercept rescaled to the weights' curvature (exact changes of variables:
the same minimiser, in about half the iterations). The whole sweep costs about what scikit-learn spends on one
default fit (scripts/bench_probe.py --grid, BENCHMARKS.md). torch is imported inside the functions, so
importing this module costs numpy only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from toolkit.errors import ConfigError
from toolkit.fitting.lbfgs import PathLBFGS
from toolkit.fitting.result import FitResult
from toolkit.runtime import resolve_device, torch_threads

if TYPE_CHECKING:
    import torch

    from toolkit.config import ProbeConfig

TOL = 1e-4  # L-BFGS stops when max |gradient| of the per-sample objective is below this (scikit-learn's tol)
# The sweep's tolerances are relative: to the data's own gradient scale, max |gradient| at zero weights (the
# class-mean differences; 7e-3 for 10 well-separated classes, 5e-4 for 100 noisy ones), and to where each warm
# start begins. An absolute 1e-3 stopped 100-class sweeps before their first step, and a loose one left large Cs
# at the smaller C's solution (0 iterations); these hold across a grid of sizes, classes and noise levels
# (scripts/bench_probe.py --grid, BENCHMARKS.md).
SWEEP_DROP = 0.1  # each C of the sweep is fitted until its gradient is a tenth of where its warm start left it
SWEEP_FLOOR = 0.01  # ... or below 0.01 x scale: choosing C needs val accuracy, not the last digits of the weights
FINAL_RTOL = 0.2  # the weights a sweep returns: min(TOL, 0.2 x scale), never looser than scikit-learn's default
SWEEP_MAX_ITER = 5  # iterations per C of the coarse grid: val accuracy settles long before the weights do
REFINE_MAX_ITER = 2  # iterations per C of the refinement rounds, which start from a neighbour's solution
STOP_AFTER = 2  # the coarse grid stops after this many Cs in a row that don't beat the best val accuracy (_peaked)
SWEEP_SAMPLES = 20_000  # C is chosen on at most this many training rows; the final fit uses all of them
LINEAR_LOGIT = 1e-2  # Cs whose first-order solution has logits below this are not fitted: they all predict alike
REFINE_ROUNDS = 3  # halvings of the log10 step around the best C, as in the CLIP paper's parametric search
HISTORY = 10  # L-BFGS memory: scikit-learn (scipy) keeps 10 pairs too
CPU_THREADS = 1  # on a shared CPU, 2 OpenMP threads spin while waiting: 4.5x slower (BENCHMARKS.md)


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
           max_iter: int, tol: float, drop: float = 0.0) -> tuple[int, int]:
    """Minimise the objective at C over (W, b) in place; y are class indices. Stops when max |gradient| is below
    max(tol, drop x its value at the start). Returns (iterations, evaluations)."""
    import torch

    n_classes = W.shape[0]
    penalty = 1.0 / (2 * (C / 2 if n_classes == 2 else C) * X.shape[0])
    Y = torch.nn.functional.one_hot(y, n_classes).to(X.dtype)
    with torch.no_grad():
        start = [_loss_and_grad(X, Y, W, b, penalty)]  # L-BFGS's first evaluation, computed here to set the stop
    g_start = max(float(start[0][1].abs().max()), float(start[0][2].abs().max()))
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, max_eval=2 * max_iter,
                            tolerance_grad=max(tol, drop * g_start), tolerance_change=1e-12, history_size=HISTORY,
                            line_search_fn="strong_wolfe")

    def closure():
        with torch.no_grad():
            loss, W.grad, b.grad = start.pop() if start else _loss_and_grad(X, Y, W, b, penalty)
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
                max_iter: int = 1000, tol: float = TOL, threads: int = CPU_THREADS) -> FitResult:
    """Logistic regression at one C on (n, D) features X and class indices y (0..n_classes-1).

    `init` (coef (C, D), intercept (C,)) warm-starts L-BFGS; without it the weights start at zero.
    Probabilities match scikit-learn's LogisticRegression(C=C) fitted on the same data (to the tolerance).
    """
    import torch

    n_classes = _n_classes(n_classes, y)
    dev = resolve_device(device)
    with torch_threads(threads, dev):
        Xt, yt = _tensors(X, y, dev)
        start = None if init is None else tuple(torch.as_tensor(np.asarray(a, np.float32), device=dev) for a in init)
        W, b = _params(start, n_classes, Xt.shape[1], dev)
        n_iter, n_evals = _lbfgs(Xt, yt, W, b, float(C), max_iter, tol)
    # n_iter: L-BFGS iterations; n_evals: objective + gradient evaluations (each is two passes over X)
    return FitResult({"coef_": W.detach().cpu().numpy(), "intercept_": b.detach().cpu().numpy()},
                     {"C": float(C), "n_iter": n_iter, "n_evals": n_evals})


def _n_classes(n_classes: Optional[int], *ys: np.ndarray) -> int:
    n = int(max(int(np.max(y, initial=0)) for y in ys)) + 1 if n_classes is None else int(n_classes)
    return max(n, 2)


def _score(X: "torch.Tensor", y: "torch.Tensor", W: "torch.Tensor", b: "torch.Tensor"
           ) -> tuple[float, float, np.ndarray, float]:
    """(accuracy, mean log loss with probabilities clipped at 1e-12, (n, C) proba, the mean log loss's standard
    error) of weights on (X, y)."""
    import math

    import torch

    with torch.no_grad():
        logp = torch.log_softmax(torch.addmm(b, X, W.t()), dim=1)
        losses = -logp.gather(1, y[:, None]).clamp_min(math.log(1e-12)).double()
        se = float(losses.std(unbiased=False)) / math.sqrt(len(y)) if len(y) else 0.0
        correct = int((logp.argmax(dim=1) == y).sum())
        return correct / len(y), float(losses.mean()), logp.exp().cpu().numpy(), se


def log_grid(c_min: float, c_max: float, steps: int) -> list[float]:
    """`steps` log-spaced values from c_min to c_max, increasing."""
    return [float(c) for c in np.logspace(np.log10(c_min), np.log10(c_max), steps)]


def sweep_c(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, grid: Sequence[float],
            refit: bool = True, refine_rounds: int = REFINE_ROUNDS, n_classes: Optional[int] = None,
            device: str = "auto", max_iter: int = 1000, tol: Optional[float] = None,
            final_tol: Optional[float] = None, threads: int = CPU_THREADS) -> FitResult:
    """Pick C on the validation split as in the CLIP paper, then fit the final weights at that C.

    C is chosen on at most SWEEP_SAMPLES training rows (a fixed random subset when there are more; the final
    fit uses them all). Every C in `grid` is fitted in increasing order and scored on val, stopping once val
    accuracy has peaked (`_peaked`); then `refine_rounds` rounds try best * 10**(+-step) with the log10 step
    (the grid's smallest) halved each round. Each fit starts from the solution at the nearest smaller C tried;
    a C so small that its logits stay below LINEAR_LOGIT gets its first-order solution, unfitted. Ties in val
    accuracy go to the lower val log loss. The final fit, on train + val with `refit` (else train), starts
    from the chosen C's solution and runs to `final_tol`. Each C's fit stops at a SWEEP_DROP of its starting
    gradient, after SWEEP_MAX_ITER iterations (REFINE_MAX_ITER in the refinement rounds), or at `tol` (default
    SWEEP_FLOOR x the data's gradient scale, max |gradient| at zero weights); `final_tol` defaults to
    min(TOL, FINAL_RTOL x scale). y are class indices 0..n_classes-1. Returns a FitResult: coef (n_classes, D),
    intercept (n_classes,), params, the sweep, val proba.
    """
    import torch

    grid = sorted({float(c) for c in grid})
    if not grid or grid[0] <= 0:
        raise ConfigError(f"{{field}} {grid} needs positive values (the inverse L2 strength), e.g. 0.01,0.1,1",
                          field="c_grid")
    n_classes = _n_classes(n_classes, y_train, y_val)
    dev = resolve_device(device)
    with torch_threads(threads, dev):
        Xt, yt = _tensors(X_train, y_train, dev)
        Xv, yv = _tensors(X_val, y_val, dev)
        # fitted on features re-centred on the training mean: logits W (x - mu) + b' are the same model with
        # b = b' - W mu (the intercept is not penalised), and the intercept no longer pulls against the weights
        mu = Xt.mean(dim=0)
        Xt, Xv = Xt - mu, Xv - mu
        rows = _sweep_rows(len(yt))
        Xs, ys = (Xt, yt) if rows is None else (Xt[rows.to(dev)], yt[rows.to(dev)])
        path = _CPath(Xs, ys, Xv, yv, n_classes, max_iter, tol, SWEEP_DROP)
        final_tol = min(TOL, FINAL_RTOL * path.scale) if final_tol is None else final_tol
        best = _search(grid, path.tried, path.trial, refine_rounds, path.loss_se)
        X, y = Xt, yt
        if refit:
            X, y = torch.cat([Xt, path.X_val]), torch.cat([yt, path.y_val])
        Y = torch.nn.functional.one_hot(y, n_classes).to(X.dtype)
        path.qn.restore(path.states.get(best, ([], None, None)))  # the chosen C's memory: nearly this curvature
        W, b, final_iter = path.fit(X, Y, *path.solutions[best], best, max_iter, final_tol, exact=True)
        coef, intercept = W.cpu().numpy(), (b - W @ mu).cpu().numpy()
    sweep = [{"param": "C", "value": c, "val_accuracy": a, "val_loss": lo, "n_iter": path.n_iter[c]}
             for c, (a, lo, _) in sorted(path.tried.items())]
    params = {"C": best, "solver": "torch-lbfgs", "device": dev.type, "tol": path.tol, "final_tol": final_tol,
              "max_iter": max_iter, "n_iter": final_iter, "sweep_iter": sum(path.n_iter.values()),
              "n_evals": path.n_evals, "sweep_rows": len(ys), "n_candidates": len(path.tried),
              "refit": "train+val" if refit else "none"}
    return FitResult({"coef_": coef, "intercept_": intercept}, params, sweep, path.tried[best][2])


def _sweep_rows(n: int) -> Optional["torch.Tensor"]:
    """The training rows C is chosen on: all of them up to SWEEP_SAMPLES, else a fixed random SWEEP_SAMPLES
    (seeded: the same data gives the same sweep), in their original order."""
    import torch

    if n <= SWEEP_SAMPLES:
        return None
    gen = torch.Generator().manual_seed(0)
    return torch.randperm(n, generator=gen)[:SWEEP_SAMPLES].sort().values


class _CPath:
    """Fits along the C path on one (train, val) pair, kept on the device; each C warm-starts from the nearest
    smaller C's solution and from the L-BFGS memory of the fit before it (toolkit.fitting.lbfgs)."""

    def __init__(self, X, y, X_val, y_val, n_classes: int, max_iter: int, tol: Optional[float], drop: float):
        import torch

        self.X, self.y, self.X_val, self.y_val = X, y, X_val, y_val
        self.n_classes, self.max_iter, self.drop = n_classes, max_iter, drop
        self.Y = torch.nn.functional.one_hot(y, n_classes).to(X.dtype)
        # the gradient at zero weights, (1/k - one-hot)^T X / n: its scale sets the tolerances, and -C n times it
        # is the solution at small C (halved for two classes, fitted at C / 2), the intercept at the log class
        # frequencies
        self.g0 = torch.mm((1.0 / n_classes - self.Y).t(), X).div_(X.shape[0])
        self.scale = float(self.g0.abs().max())
        self.tol = SWEEP_FLOOR * self.scale if tol is None else tol
        counts = self.Y.sum(dim=0).clamp_min(0.5)
        self.b0 = torch.log(counts / counts.sum())
        self.b0 -= self.b0.mean()
        x_max = float(X.norm(dim=1).max())
        # logits of the first-order solution at C are at most C * linear_per_c
        self.linear_per_c = X.shape[0] * float(self.g0.norm(dim=1).max()) * x_max / (2 if n_classes == 2 else 1)
        # L-BFGS sees the intercept as b / b_scale, b_scale the features' RMS entry (~1/sqrt(D) for unit-norm
        # features): its curvature is then on the weights' scale, where it is D times theirs as b (one scalar
        # Hessian guess can't serve both); stopping still measures the unscaled gradient (`fit`'s `exact`)
        self.b_scale = max(float(X.pow(2).mean().sqrt()), 1e-6)
        # bounds the mean cross-entropy's Hessian (Boehning), the rescaled intercept included
        self.curvature = 0.5 * (x_max ** 2 + self.b_scale ** 2)
        self.qn = PathLBFGS(self.g0.numel(), 1.0 / self.curvature, HISTORY)  # W's entries penalised, b's not
        self.tried: dict[float, tuple[float, float, np.ndarray]] = {}  # C -> (val accuracy, val loss, val proba)
        self.solutions: dict[float, tuple] = {}  # C -> (W, b) detached tensors
        self.states: dict[float, tuple] = {}  # C -> the L-BFGS memory and (loss, gradient) it stopped at
        self.n_iter: dict[float, int] = {}
        self.loss_se: dict[float, float] = {}  # C -> standard error of its mean val loss
        self.n_evals = 0

    def trial(self, c: float, iterations: Optional[int] = None) -> None:
        if c * self.linear_per_c <= LINEAR_LOGIT:  # logits this small: the first-order solution, no fit
            W = self.g0 * (-c * self.X.shape[0] / (2 if self.n_classes == 2 else 1))
            b, self.n_iter[c] = self.b0.clone(), 0
        else:
            below = [t for t in self.solutions if t < c]
            W, b = self.solutions[max(below)] if below else (self.g0 * 0, self.b0)
            self.qn.restore(self.states.get(max(below) if below else None, ([], None, None)))
            iterations = min(self.max_iter, iterations or SWEEP_MAX_ITER)
            W, b, self.n_iter[c] = self.fit(self.X, self.Y, W, b, c, iterations, self.tol, self.drop)
            self.states[c] = self.qn.state()
        self.solutions[c] = (W, b)
        acc, loss, proba, self.loss_se[c] = _score(self.X_val, self.y_val, W, b)
        self.tried[c] = (acc, loss, proba)

    def fit(self, X, Y, W, b, c: float, max_iter: int, tol: float, drop: float = 0.0, exact: bool = False):
        """(W, b, iterations): the objective at C on (X, one-hot Y) minimised from copies of (W, b). `exact`: the
        stop tests max |gradient| in (W, b) as scikit-learn does, not in the rescaled variables L-BFGS moves (the
        final fit; the sweep's fits only need val accuracy)."""
        import torch

        k, dim = W.shape
        penalty = 1.0 / (2 * (c / 2 if k == 2 else c) * X.shape[0])
        c_b = self.b_scale

        def fg(theta):
            loss, g_w, g_b = _loss_and_grad(X, Y, theta[:k * dim].view(k, dim), theta[k * dim:] * c_b, penalty)
            return float(loss), torch.cat([g_w.reshape(-1), g_b * c_b])

        theta = torch.cat([W.reshape(-1), b / c_b])
        self.qn.first_step = 1.0 / (self.curvature + 2 * penalty)
        start = None
        if self.qn.last is not None and X is self.X:  # the previous C's end point: only the penalty changed
            (f, g), shift = self.qn.last, penalty - self.qn.penalty
            g = g.clone()
            g[:k * dim].add_(theta[:k * dim], alpha=2 * shift)
            start = (f + shift * float(theta[:k * dim].double().pow(2).sum()), g)

        def size(g):  # max |gradient| in (W, b), as scikit-learn measures it: b's entries are c_b x smaller here
            return max(float(g[:k * dim].abs().max()), float(g[k * dim:].abs().max()) / c_b)

        n_iter, n_evals = self.qn.minimise(fg, theta, penalty, max_iter, tol, drop, start, size if exact else None)
        self.n_evals += n_evals
        return theta[:k * dim].view(k, dim), theta[k * dim:] * c_b, n_iter


def _search(grid: list[float], tried: dict, trial, refine_rounds: int, loss_se: Optional[dict] = None) -> float:
    """Run `trial` over the grid, then the refinement rounds; returns the best C: among the Cs within one val
    image of the best val accuracy, the one of lowest val loss (a one-image lead is noise; a C that leads by it
    with near-uniform probabilities was seen picked over one with a tenth of the loss)."""
    def best() -> float:
        top = max(acc for acc, _, _ in tried.values())
        n_val = max(len(next(iter(tried.values()))[2]), 1)
        near = [c for c in tried if tried[c][0] >= top - 1.0 / n_val - 1e-12]
        return min(near, key=lambda c: (tried[c][1], -tried[c][0]))

    for i, c in enumerate(grid):
        trial(c)
        done = grid[:i + 1]
        if _peaked([tried[t][0] for t in done], len(tried[c][2]), [tried[t][1] for t in done],
                   (loss_se or {}).get(c, 0.0)):
            break
    step = float(np.diff(np.log10(grid)).min()) if len(grid) > 1 else 0.0
    for _ in range(refine_rounds if step > 0 else 0):
        step /= 2
        centre = best()
        for c in (centre * 10 ** -step, centre * 10 ** step):
            if c not in tried:
                trial(c, REFINE_MAX_ITER)
    return best()


def _peaked(accuracies: list[float], n_val: int, losses: Optional[list[float]] = None, loss_se: float = 0.0
            ) -> bool:
    """Whether the coarse grid can stop, given the val accuracies of its Cs so far (increasing C): the last C is
    clearly below the best (two standard errors, at least two val images), or the last STOP_AFTER Cs did not
    beat the best before them by more than one val image; and in either case the best is clearly above the
    smallest C's (a sweep still at chance, or at the class priors, has not started). With `losses` (val log loss
    per C) and `loss_se` (the last one's standard error), one C that doesn't beat the best is enough when its val
    loss is clearly (two standard errors) above the lowest: past the peak, larger Cs only overfit more."""
    top, stale = -1.0, 0
    for acc in accuracies:
        stale, top = (0, acc) if acc > top + 1.0 / n_val + 1e-12 else (stale + 1, max(top, acc))
    margin = max(2.0 * np.sqrt(top * (1.0 - top) / max(n_val, 1)), 2.0 / max(n_val, 1))
    learned = accuracies[0] < top - margin
    overfit = bool(losses) and stale >= 1 and loss_se > 0 and losses[-1] > min(losses) + 2.0 * loss_se
    return learned and (stale >= STOP_AFTER or accuracies[-1] < top - margin or overfit)


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
