"""toolkit.fitting.logreg: torch L-BFGS logistic regression against scikit-learn (the reference), and the C sweep."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from toolkit.errors import ConfigError
from toolkit.heads.base import softmax
from toolkit.fitting.logreg import fit_fixed_c, log_grid, sweep_c
from toolkit.runtime import resolve_device

TIGHT_TOL = 1e-6  # fits compared with scikit-learn run far past its tolerance: the optimum, not a stopping point


def synthetic(n: int, d: int, n_classes: int, noise: float, seed: int = 0):
    """Unit-norm features: class means on the sphere plus isotropic noise, renormalized. Learnable, not separable."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    y = rng.integers(0, n_classes, n)
    x = means[y] + noise * rng.normal(size=(n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def proba(fit, x: np.ndarray) -> np.ndarray:
    return softmax(x @ fit.coef.T + fit.intercept)


def exact(x: np.ndarray, y: np.ndarray, C: float) -> LogisticRegression:
    """scikit-learn run to the optimum: at its default tol=1e-4 it stops up to 5e-2 (in probability) short of it."""
    return LogisticRegression(C=C, tol=1e-10, max_iter=5000).fit(x, y)


@pytest.fixture(scope="module")
def five():
    x, y = synthetic(3000, 32, 5, noise=2.0)
    return x[:1500], y[:1500], x[1500:], y[1500:]


@pytest.fixture(scope="module")
def sweep_data():
    """Few samples in 64 dims: the regularization matters, val accuracy peaks inside the grid."""
    x, y = synthetic(2000, 64, 4, noise=3.0, seed=3)
    return x[:300], y[:300], x[300:600], y[300:600], x[600:], y[600:]


@pytest.mark.parametrize("C", [0.05, 0.5, 10.0])
def test_fit_at_fixed_C_matches_sklearn(five, C):
    xtr, ytr, xte, yte = five
    ours = fit_fixed_c(xtr, ytr, C)  # scikit-learn's default tolerance: accuracy within 0.3 points
    sk = LogisticRegression(C=C).fit(xtr, ytr)
    assert abs(float((proba(ours, xte).argmax(1) == yte).mean()) - sk.score(xte, yte)) <= 0.003
    tight = fit_fixed_c(xtr, ytr, C, tol=TIGHT_TOL)  # the sweep's final tolerance: the optimum's probabilities
    np.testing.assert_allclose(proba(tight, xte), exact(xtr, ytr, C).predict_proba(xte), atol=3e-3)


def test_binary_fit_is_sklearns_one_row_as_two_softmax_rows():
    x, y = synthetic(800, 16, 2, noise=3.0, seed=1)
    ours = fit_fixed_c(x[:400], y[:400], 2.0, tol=TIGHT_TOL)
    ref = exact(x[:400], y[:400], 2.0)
    assert ours.coef.shape == (2, 16) and ours.intercept.shape == (2,)
    np.testing.assert_allclose(proba(ours, x[400:]), ref.predict_proba(x[400:]), atol=1e-3)
    np.testing.assert_allclose(ours.coef[1] - ours.coef[0], ref.coef_[0], atol=2e-2)  # rows -w/2, +w/2
    np.testing.assert_allclose(ours.coef[0], -ours.coef[1], atol=1e-3)
    result = sweep_c(x[:300], y[:300], x[300:400], y[300:400], log_grid(1e-2, 1e2, 5))
    assert result.coef.shape == (2, 16) and result.val_proba.shape == (100, 2)


def test_sweep_picks_a_sensible_C(sweep_data):
    xtr, ytr, xva, yva, xte, yte = sweep_data
    grid = log_grid(1e-4, 1e4, 9)
    result = sweep_c(xtr, ytr, xva, yva, grid)
    values = [r["value"] for r in result.sweep]
    coarse = [v for v in values if round(np.log10(v), 6) == round(np.log10(v))]
    assert len(values) <= 9 + 6 and values == sorted(values)  # at most 3 refinement rounds x 2 candidates
    assert coarse == grid[:len(coarse)]  # the coarse grid in order, maybe stopped past the peak
    assert any(round(np.log10(v), 6) != round(np.log10(v)) for v in values)
    best = result.params["C"]
    chosen = next(r for r in result.sweep if r["value"] == best)
    top = max(r["val_accuracy"] for r in result.sweep)  # within one val image of the best, the lowest loss
    near = [r for r in result.sweep if r["val_accuracy"] >= top - 1 / len(yva) - 1e-12]
    assert chosen in near and chosen["val_loss"] == min(r["val_loss"] for r in near)
    assert 1e-3 < best < 1e3 and result.params["refit"] == "train+val"
    # scikit-learn agrees that C is good: at our C its val accuracy is within a point of its best on the grid
    sk_val = {c: LogisticRegression(C=c, max_iter=1000).fit(xtr, ytr).score(xva, yva) for c in grid + [best]}
    assert sk_val[best] >= max(sk_val.values()) - 0.01
    # and the refit on train + val predicts as scikit-learn's at that C (within 0.3 points of the test set)
    ref = exact(np.concatenate([xtr, xva]), np.concatenate([ytr, yva]), best)
    assert np.mean(proba(result, xte).argmax(1) != ref.predict(xte)) <= 0.003
    assert result.val_proba.shape == (len(yva), 4) and np.allclose(result.val_proba.sum(1), 1, atol=1e-5)


def test_the_coarse_grid_stops_once_val_accuracy_has_clearly_peaked():
    from toolkit.fitting.logreg import _peaked

    x, y = synthetic(1200, 64, 4, noise=6.0, seed=3)  # 200 noisy training images in 64 dims: large Cs overfit
    grid = log_grid(1e-4, 1e6, 11)
    result = sweep_c(x[:200], y[:200], x[200:600], y[200:600], grid, refine_rounds=0)
    tried = [r["value"] for r in result.sweep]
    assert len(tried) < len(grid) and tried == grid[:len(tried)]  # noisy data peaks early: large Cs never fitted
    # it stopped at the first C where the rule holds, and the rule held there
    accs = [r["val_accuracy"] for r in result.sweep]
    assert _peaked(accs, 400) and not any(_peaked(accs[:k], 400) for k in range(1, len(accs)))
    # the rule: two Cs in a row without a new best (by more than one image), or one clearly below the best,
    # once the best is clearly above the smallest C's; never while still at chance
    assert _peaked([0.25, 0.6, 0.8, 0.8, 0.801], 400) and not _peaked([0.25, 0.6, 0.8, 0.8], 400)
    assert _peaked([0.25, 0.6, 0.8, 0.7], 400) and not _peaked([0.25, 0.6, 0.8, 0.79], 400)
    assert not _peaked([0.25, 0.25, 0.25, 0.25], 400) and not _peaked([0.25, 0.26, 0.25, 0.25], 400)


def test_small_cs_take_the_first_order_solution_and_large_data_sweeps_on_a_subset(monkeypatch):
    """Cs whose logits would stay tiny predict alike: not fitted (0 iterations). Past SWEEP_SAMPLES training
    rows C is chosen on a fixed subset, and the final fit still uses every row."""
    import toolkit.fitting.logreg as logreg

    x, y = synthetic(1500, 32, 3, 3.0, seed=5)
    xtr, ytr, xva, yva, xte = x[:1000], y[:1000], x[1000:1300], y[1000:1300], x[1300:]
    grid = log_grid(1e-6, 1e2, 9)
    full = sweep_c(xtr, ytr, xva, yva, grid)
    assert full.params["sweep_rows"] == 1000 and full.sweep[0]["n_iter"] == 0 and full.sweep[-1]["value"] > 1e-3
    assert all(r["n_iter"] > 0 for r in full.sweep if r["value"] >= 1e-2)
    monkeypatch.setattr(logreg, "SWEEP_SAMPLES", 400)  # the 20,000 of real use, scaled to a small test
    sub = sweep_c(xtr, ytr, xva, yva, grid, refit=False, final_tol=TIGHT_TOL)
    assert sub.params["sweep_rows"] == 400
    cold = fit_fixed_c(xtr, ytr, sub.params["C"], tol=TIGHT_TOL)  # the final weights: all 1000 rows at that C
    np.testing.assert_allclose(proba(sub, xte), proba(cold, xte), atol=1e-3)


def test_tolerances_follow_the_datas_gradient_scale():
    """100 noisy classes have a gradient of ~5e-4 at zero weights: an absolute sweep tolerance of 1e-3 would
    stop before the first step and pick a chance-level C. Relative tolerances train, and match scikit-learn."""
    x, y = synthetic(3000, 64, 100, noise=4.0, seed=1)
    tr, va, te = slice(0, 2000), slice(2000, 2500), slice(2500, None)
    result = sweep_c(x[tr], y[tr], x[va], y[va], log_grid(1e-4, 1e4, 9))
    assert result.params["tol"] < 1e-3 and result.params["final_tol"] <= 1e-4
    ours = float(np.mean(proba(result, x[te]).argmax(1) == y[te]))
    ref = LogisticRegression().fit(x[:2500], y[:2500]).score(x[te], y[te])
    assert ours >= ref - 0.02 and ours > 0.1  # chance is 0.01 (an early stop at zero weights scored 0.007)


def test_warm_start_gives_the_cold_start_solution(five, sweep_data):
    xtr, ytr, xte, _ = five
    cold = fit_fixed_c(xtr, ytr, 0.5, tol=TIGHT_TOL)
    start = fit_fixed_c(xtr, ytr, 0.05)
    warm = fit_fixed_c(xtr, ytr, 0.5, init=(start.coef, start.intercept), tol=TIGHT_TOL)
    np.testing.assert_allclose(proba(warm, xte), proba(cold, xte), atol=1e-3)
    # the sweep's weights, reached along the C path, are the cold fit's at the chosen C
    xtr, ytr, xva, yva, xte, _ = sweep_data
    result = sweep_c(xtr, ytr, xva, yva, log_grid(1e-4, 1e4, 9), refit=False, final_tol=TIGHT_TOL)
    cold = fit_fixed_c(xtr, ytr, result.params["C"], tol=TIGHT_TOL)
    np.testing.assert_allclose(proba(result, xte), proba(cold, xte), atol=1e-3)


def test_sweep_is_deterministic(sweep_data):
    xtr, ytr, xva, yva, _, _ = sweep_data
    a, b = (sweep_c(xtr, ytr, xva, yva, log_grid(1e-2, 1e2, 5)) for _ in range(2))
    assert np.array_equal(a.coef, b.coef) and np.array_equal(a.intercept, b.intercept)
    assert a.sweep == b.sweep and a.params == b.params


@pytest.mark.parametrize("grid", [[], [0.0, 1.0], [-1.0]])
def test_a_grid_without_positive_C_is_a_config_error(sweep_data, grid):
    xtr, ytr, xva, yva, _, _ = sweep_data
    with pytest.raises(ConfigError, match="positive"):
        sweep_c(xtr, ytr, xva, yva, grid)


def test_auto_device_is_cuda_exactly_when_there_is_one():
    import torch

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
def test_gpu_sweep_matches_cpu(sweep_data):
    xtr, ytr, xva, yva, xte, _ = sweep_data
    cpu, gpu = (sweep_c(xtr, ytr, xva, yva, log_grid(1e-2, 1e2, 5), device=d) for d in ("cpu", "cuda"))
    assert gpu.params["device"] == "cuda" and gpu.params["C"] == cpu.params["C"]
    np.testing.assert_allclose(proba(gpu, xte), proba(cpu, xte), atol=1e-3)


def test_importing_the_fitting_modules_does_not_import_torch():
    code = "import sys, toolkit.fitting.probe, toolkit.fitting.logreg; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_offset_features_and_skewed_classes_fit_to_scikit_learns_tolerance():
    """CLIP features share a large common direction and real classes are unbalanced: the sweep fits re-centred
    features with a rescaled intercept (both exact changes of variables), and its final weights, mapped back,
    are the cold fit's at the chosen C and meet the tolerance on the unscaled gradient, as scikit-learn measures it."""
    x, y = synthetic(2400, 48, 6, noise=3.0, seed=7)
    common = np.random.default_rng(7).normal(size=48)
    x = x + 3.0 * common / np.linalg.norm(common)  # cosine ~0.9 between any two images, as CLIP's
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    keep = (y != 0) | (np.arange(len(y)) % 5 == 0)  # class 0 a fifth as frequent
    x, y = x[keep], y[keep]
    xtr, ytr, xva, yva, xte = x[:900], y[:900], x[900:1300], y[900:1300], x[1300:]
    result = sweep_c(xtr, ytr, xva, yva, log_grid(1e-3, 1e3, 7), refit=False)
    C, n = result.params["C"], len(ytr)
    W, b = result.coef.astype(np.float64), result.intercept.astype(np.float64)
    p = softmax(xtr @ W.T + b)
    residual = p - np.eye(6)[ytr]
    grad_w, grad_b = residual.T @ xtr / n + W / (C * n), residual.mean(axis=0)
    assert max(np.abs(grad_w).max(), np.abs(grad_b).max()) <= 1.05 * result.params["final_tol"]
    cold = fit_fixed_c(xtr, ytr, C, tol=TIGHT_TOL)
    np.testing.assert_allclose(proba(result, xte), proba(cold, xte), atol=2e-2)
    assert np.mean(proba(result, xte).argmax(1) != proba(cold, xte).argmax(1)) <= 0.01


def test_the_coarse_grid_stops_at_the_first_c_past_the_peak_whose_val_loss_has_clearly_risen():
    from toolkit.fitting.logreg import _peaked

    accs = [0.25, 0.6, 0.8, 0.795]  # no new best, not clearly below it: one such C alone never stopped the grid
    assert not _peaked(accs, 400)
    assert _peaked(accs, 400, [1.3, 1.0, 0.6, 0.9], loss_se=0.02)  # its val loss is 15 standard errors up
    assert not _peaked(accs, 400, [1.3, 1.0, 0.6, 0.62], loss_se=0.02)  # one standard error: noise
    assert not _peaked([0.25, 0.6, 0.8], 400, [1.3, 1.0, 1.2], loss_se=0.02)  # a new best accuracy: go on
