"""L-BFGS along a regularization path: one curvature memory carried from each C to the next.

Along the C sweep the objective changes only in its penalty, lambda ||W||^2 with lambda = 1 / (2 C n): the
data term's curvature stays, the penalty's is exactly 2 lambda on the penalised coordinates. So the (s, y) pairs
of one fit stay valid for the next once each y is moved by 2 (lambda_new - lambda_old) s there, and the next
fit starts with a Hessian model instead of a gradient step: warm-started Cs take about one evaluation per
iteration from the first, where a fresh L-BFGS spends its first iterations finding a step size. The line
search is Armijo backtracking (by parabola) from the unit step (the objective is convex, so every pair has positive
curvature). Works on one flat float32 tensor on any device; torch is imported by the caller.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    import torch

ARMIJO = 1e-4  # sufficient decrease: f(x + t d) <= f(x) + ARMIJO t g.d (scipy's and torch's c1)
BACKTRACKS = 20  # shortenings of the step (each 0.1x-0.5x) before a direction is given up on
STALL = 1e-8  # float32 logits put ~4e-9 of noise on the (float64-summed) loss: a relative gain below this is none,
STALLS = 3  # ... and this many such iterations in a row end the fit (the gradient is at float32's floor too)


def _max_abs(g: "torch.Tensor") -> float:
    return float(g.abs().max())


class PathLBFGS:
    """L-BFGS state for objectives f_lambda(theta) = data(theta) + lambda ||theta[:n_penalised]||^2.

    `minimise(fg, theta, penalty, ...)` fits one lambda in place; calling it again with another penalty reuses
    the memory. `first_step` scales the very first direction (no memory yet): 1 / (a bound on the curvature).
    """

    def __init__(self, n_penalised: int, first_step: float, history: int = 10):
        self.n_penalised, self.first_step, self.history = n_penalised, first_step, history
        self.pairs: list[tuple["torch.Tensor", "torch.Tensor"]] = []  # (s, y), oldest first
        self.penalty = None
        self.last = None  # (loss, gradient) where the last minimise stopped

    def retarget(self, penalty: float) -> None:
        """Move the memory to a new penalty: y gains 2 (lambda_new - lambda_old) s on the penalised part."""
        if self.penalty is not None and penalty != self.penalty:
            shift = 2.0 * (penalty - self.penalty)
            moved = []
            for s, y in self.pairs:  # new tensors: a copy of this state (`state`) keeps its own
                y = y.clone()
                y[:self.n_penalised].add_(s[:self.n_penalised], alpha=shift)
                moved.append((s, y))
            self.pairs = [(s, y) for s, y in moved if float(s.dot(y)) > 0]
        self.penalty = penalty

    def state(self) -> tuple:
        """The memory and the last point's (loss, gradient), to resume from with `restore`."""
        return list(self.pairs), self.penalty, self.last

    def restore(self, state: tuple) -> None:
        self.pairs, self.penalty, self.last = list(state[0]), state[1], state[2]

    def direction(self, g: "torch.Tensor") -> "torch.Tensor":
        """-H g by the two-loop recursion, H scaled by s.y / y.y of the newest pair."""
        if not self.pairs:
            return g.mul(-self.first_step)
        q, alphas = g.neg(), []
        for s, y in reversed(self.pairs):
            a = float(s.dot(q)) / float(s.dot(y))
            q.add_(y, alpha=-a)
            alphas.append(a)
        s, y = self.pairs[-1]
        q.mul_(float(s.dot(y)) / float(y.dot(y)))
        for (s, y), a in zip(self.pairs, reversed(alphas)):
            q.add_(s, alpha=a - float(y.dot(q)) / float(s.dot(y)))
        return q

    def minimise(self, fg: Callable[["torch.Tensor"], tuple[float, "torch.Tensor"]], theta: "torch.Tensor",
                 penalty: float, max_iter: int, tol: float, drop: float = 0.0, start=None,
                 size: Optional[Callable[["torch.Tensor"], float]] = None) -> tuple[int, int]:
        """Minimise fg (theta -> (loss, flat gradient)) at `penalty` from theta, in place. `start`: fg(theta), when
        the caller has it. Stops when the gradient's size (`size`, default max |gradient|) is below max(tol, drop x
        its size at the start), or after max_iter iterations. Returns (iterations, evaluations); `last` holds the
        end point's (loss, gradient)."""
        self.retarget(penalty)
        size = size or _max_abs
        f, g = fg(theta) if start is None else start
        evals, stop = int(start is None), max(tol, drop * size(g))
        it = self._iterate(fg, theta, f, g, max_iter, stop, size)
        return it[0], evals + it[1]

    def _iterate(self, fg, theta, f, g, max_iter: int, stop: float, size) -> tuple[int, int]:
        evals = stalled = 0
        self.last = (f, g)
        for it in range(max_iter):
            if size(g) <= stop:
                return it, evals
            d = self.direction(g)
            slope = float(g.dot(d))
            if slope >= 0:  # the memory no longer gives descent: start it again from the gradient
                self.pairs, d = [], g.mul(-self.first_step)
                slope = float(g.dot(d))
            t = 1.0
            for _ in range(BACKTRACKS):
                f_new, g_new = fg(theta + t * d)
                evals += 1
                if f_new <= f + ARMIJO * t * slope:
                    break
                # the minimum of the parabola through f, the slope and f_new, kept within [0.1, 0.5] of t: an
                # overshoot by 5x comes back in one evaluation, not three halvings
                curve = f_new - f - slope * t
                t = min(max(-slope * t * t / (2 * curve), 0.1 * t), 0.5 * t) if curve > 0 else 0.5 * t
            else:
                return it, evals  # no decrease along d at float32 resolution: as converged as it gets
            s, y = d.mul_(t), g_new - g
            theta.add_(s)
            if float(s.dot(y)) > 1e-10 * float(y.dot(y)):
                self.pairs = (self.pairs + [(s, y)])[-self.history:]
            stalled = stalled + 1 if f - f_new <= STALL * max(1.0, abs(f)) else 0
            f, g = f_new, g_new
            self.last = (f, g)
            if stalled >= STALLS:
                return it + 1, evals
        return max_iter, evals
