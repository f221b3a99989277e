"""Benchmark: fit a linear probe on N x D synthetic CLIP-like features by each method; wall time + accuracy.

Features are unit-norm: class means on the sphere plus isotropic noise, renormalized (learnable, not
separable). Splits: 70% train, 15% val, 15% test. Methods, all on the same arrays, in one run:

  sklearn-default   LogisticRegression() with its defaults (C=1, L-BFGS), fit on train+val: the reference
  logreg            clipkit's fit_logreg: log-spaced C sweep on val, 3 refinement rounds, refit on train+val
  linear            clipkit's fit_linear: Lightning linear layer, AdamW, weight-decay sweep, early stopping

Usage:
  .venv/bin/python scripts/bench_probe.py                      # 50,000 x 512, 10 classes
  .venv/bin/python scripts/bench_probe.py --n 5000 --json out.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import _bench  # puts the project root on sys.path
from toolkit.config import ProbeConfig  # noqa: E402  (after _bench)
from toolkit.probe import fit_logreg  # noqa: E402


def synthetic(n: int, d: int, n_classes: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    y = rng.integers(0, n_classes, n)
    x = means[y] + noise * rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def accuracy(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ coef.T + intercept).argmax(axis=1) == y).mean())


def run(args) -> dict:
    x, y = synthetic(args.n, args.dim, args.classes, args.noise, args.seed)
    n_tr, n_va = int(0.7 * args.n), int(0.15 * args.n)
    tr, va, te = slice(0, n_tr), slice(n_tr, n_tr + n_va), slice(n_tr + n_va, None)
    cfg = ProbeConfig(seed=args.seed, weight_decays=args.weight_decays, c_steps=args.c_steps)
    rows = []
    if "sklearn-default" in args.methods:
        from sklearn.linear_model import LogisticRegression

        t0 = time.perf_counter()
        clf = LogisticRegression().fit(np.concatenate([x[tr], x[va]]), np.concatenate([y[tr], y[va]]))
        wall = time.perf_counter() - t0
        rows.append({"method": "sklearn-default", "wall_s": wall, "test_accuracy": float((clf.predict(x[te]) == y[te]).mean()),
                     "chosen": "C=1 (default)", "fits": 1})
    if "logreg" in args.methods:
        t0 = time.perf_counter()
        fit = fit_logreg(x[tr], y[tr], x[va], y[va], cfg)
        wall = time.perf_counter() - t0
        rows.append({"method": "logreg", "wall_s": wall, "test_accuracy": accuracy(fit.coef, fit.intercept, x[te], y[te]),
                     "chosen": f"C={fit.params['C']:.3g}", "fits": fit.params["n_candidates"] + 1})
    if "linear" in args.methods:
        t0 = time.perf_counter()
        from toolkit.trainer import fit_linear

        import_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fit = fit_linear(x[tr], y[tr], x[va], y[va], args.classes, cfg)
        wall = time.perf_counter() - t0
        epochs = sum(r["best_epoch"] + 1 + cfg.patience for r in fit.sweep)
        rows.append({"method": "linear", "wall_s": wall, "test_accuracy": accuracy(fit.coef, fit.intercept, x[te], y[te]),
                     "chosen": f"weight_decay={fit.params['weight_decay']:g}", "fits": len(fit.sweep),
                     "epochs_about": epochs, "import_lightning_s": import_s, "precision": fit.params["precision"]})
    ref = next((r["wall_s"] for r in rows if r["method"] == "sklearn-default"), None)
    for r in rows:
        r["time_vs_sklearn_default"] = r["wall_s"] / ref if ref else None
    return {"n": args.n, "dim": args.dim, "classes": args.classes, "noise": args.noise, "rows": rows,
            "machine": _bench.machine_note(),
            "split": {"train": n_tr, "val": n_va, "test": args.n - n_tr - n_va}}


def markdown(res: dict) -> str:
    lines = [f"{res['n']:,} x {res['dim']} features, {res['classes']} classes (train {res['split']['train']:,} / "
             f"val {res['split']['val']:,} / test {res['split']['test']:,}), {res['machine']}", "",
             "| method | wall time (s) | x sklearn default | test accuracy | chosen | fits |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        ratio = f"{r['time_vs_sklearn_default']:.1f}x" if r["time_vs_sklearn_default"] else "-"
        lines.append(f"| {r['method']} | {r['wall_s']:.1f} | {ratio} | {100 * r['test_accuracy']:.2f}% | "
                     f"{r['chosen']} | {r['fits']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--noise", type=float, default=8.0, help="noise norm relative to the unit class mean (8: ~87%% accuracy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--c-steps", type=int, default=13, help="logreg: coarse C grid size over 1e-6..1e6")
    ap.add_argument("--weight-decays", type=float, nargs="+", default=[0.0, 1e-4, 1e-3, 1e-2, 1e-1])
    ap.add_argument("--methods", nargs="+", default=["sklearn-default", "logreg", "linear"],
                    choices=["sklearn-default", "logreg", "linear"])
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    res = run(args)
    print(markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
