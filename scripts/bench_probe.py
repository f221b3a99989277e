"""Benchmark: fit a linear probe on N x D synthetic CLIP-like features by each method; wall time + accuracy.

Features are unit-norm: class means on the sphere plus isotropic noise, renormalized (learnable, not
separable). Splits: 70% train, 15% val, 15% test. Methods, all on the same arrays, in one run:

  sklearn-default   LogisticRegression() with its defaults (C=1, L-BFGS), fit on train+val: the reference
  logreg            clipkit's fit_logreg (toolkit.fitting.logreg, torch L-BFGS): log-spaced C sweep on val, 3
                    refinement rounds, refit on train+val; once per thread count in --threads
  sklearn-sweep     the same sweep with scikit-learn (warm-started LogisticRegression, cold refit): what
                    fit_logreg did before it moved to torch
  linear            clipkit's fit_linear: Lightning linear layer, AdamW, weight-decay sweep, early stopping

sklearn-default and logreg alternate for --rounds rounds (medians and per-round ratios: the machine is shared,
a ratio measured in alternation holds up); sklearn-sweep and linear run once, after. The first torch fit of a
process also imports torch._dynamo (torch.optim does, building its first optimizer): timed on its own, before.

Usage:
  .venv/bin/python scripts/bench_probe.py --write              # 50,000 x 512, 10 classes -> BENCHMARKS.md
  .venv/bin/python scripts/bench_probe.py --n 5000 --methods sklearn-default logreg --json out.json
  .venv/bin/python scripts/bench_probe.py --grid --write       # noise {2,4,7,10} x classes {10,100} x n {5k,50k}
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

import _bench  # puts the project root on sys.path
from toolkit.config import ProbeConfig  # noqa: E402  (after _bench)
from toolkit.fitting.logreg import CPU_THREADS, TOL, fit_fixed_c, log_grid, sweep_c  # noqa: E402

SECTION = "### Fitting {n:,} x {dim} features, {classes} classes"


def synthetic(n: int, d: int, n_classes: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    y = rng.integers(0, n_classes, n)
    x = means[y] + noise * rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def accuracy(coef: np.ndarray, intercept: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ coef.T + intercept).argmax(axis=1) == y).mean())


def sklearn_sweep(X_tr, y_tr, X_va, y_va, grid, max_iter: int):
    """fit_logreg as it was with scikit-learn: warm-started sweep, 3 refinement rounds, cold refit on train+val."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    tried: dict[float, tuple[float, float]] = {}
    clf = LogisticRegression(max_iter=max_iter, warm_start=True)
    warnings.simplefilter("ignore", ConvergenceWarning)

    def trial(c: float) -> None:
        proba = clf.set_params(C=c).fit(X_tr, y_tr).predict_proba(X_va)
        loss = -np.log(np.clip(proba[np.arange(len(y_va)), y_va], 1e-12, None)).mean()
        tried[c] = (float((proba.argmax(1) == y_va).mean()), float(loss))

    def best() -> float:
        return min(tried, key=lambda c: (-tried[c][0], tried[c][1]))

    for c in grid:
        trial(c)
    step = float(np.diff(np.log10(grid)).min())
    for _ in range(3):
        step /= 2
        centre = best()
        for c in (centre * 10 ** -step, centre * 10 ** step):
            if c not in tried:
                trial(c)
    final = LogisticRegression(C=best(), max_iter=max_iter)
    final.fit(np.concatenate([X_tr, X_va]), np.concatenate([y_tr, y_va]))
    return final, best(), len(tried)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(args) -> dict:
    import os

    from sklearn.linear_model import LogisticRegression

    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    x, y = synthetic(args.n, args.dim, args.classes, args.noise, args.seed)
    n_tr, n_va = int(0.7 * args.n), int(0.15 * args.n)
    tr, va, te = slice(0, n_tr), slice(n_tr, n_tr + n_va), slice(n_tr + n_va, None)
    x_fit, y_fit = np.concatenate([x[tr], x[va]]), np.concatenate([y[tr], y[va]])
    cfg = ProbeConfig(seed=args.seed, weight_decays=args.weight_decays, c_steps=args.c_steps)
    grid = log_grid(cfg.c_min, cfg.c_max, cfg.c_steps)  # what fit_logreg sweeps
    first_call_s = timed(lambda: fit_fixed_c(x[:64], y[:64], 1.0, device=args.device))[1]
    sides = {}
    if "sklearn-default" in args.methods:
        sides["sklearn-default"] = lambda: LogisticRegression().fit(x_fit, y_fit)
    if "logreg" in args.methods:
        for t in args.threads:
            sides[f"logreg, {t} thread{'s' * (t > 1)}"] = (lambda t=t: sweep_c(
                x[tr], y[tr], x[va], y[va], grid, max_iter=cfg.max_iter, device=args.device, threads=t, tol=args.tol))
    results, walls = alternating(sides, args.rounds)
    rows = [row(name, res, walls[name], x[te], y[te]) for name, res in results.items()]
    rows += once(args, cfg, grid, x, y, tr, va, te)
    ref = walls.get("sklearn-default")
    for r in rows:
        r["time_vs_sklearn_default"] = r["wall_s"] / statistics.median(ref) if ref else None
        if ref and r["method"] in sides:  # alternated with the reference: per-round ratios
            r["round_ratios"] = [w / s for w, s in zip(r["walls"], ref)]
    return {"n": args.n, "dim": args.dim, "classes": args.classes, "noise": args.noise, "rounds": args.rounds,
            "c_steps": args.c_steps, "tol": args.tol, "load_before": load, "first_torch_call_s": first_call_s,
            "rows": rows, "machine": _bench.machine_note(),
            "split": {"train": n_tr, "val": n_va, "test": args.n - n_tr - n_va}}


def alternating(sides: dict, rounds: int) -> tuple[dict, dict[str, list[float]]]:
    """Run each side once per round, in turn; returns (each side's last result, its wall times)."""
    walls: dict[str, list[float]] = {k: [] for k in sides}
    results = {}
    for r in range(rounds):
        for name, fn in sides.items():
            results[name], wall = timed(fn)
            walls[name].append(wall)
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in walls.items()), flush=True)
    return results, walls


def row(name: str, res, walls: list[float], x_te: np.ndarray, y_te: np.ndarray) -> dict:
    out = {"method": name, "wall_s": statistics.median(walls), "walls": walls}
    if name == "sklearn-default":
        return {**out, "test_accuracy": float((res.predict(x_te) == y_te).mean()), "chosen": "C=1 (default)",
                "fits": 1, "n_iter": int(res.n_iter_.max())}
    return {**out, "test_accuracy": accuracy(res.coef, res.intercept, x_te, y_te), "chosen": f"C={res.params['C']:.3g}",
            "fits": res.params["n_candidates"] + 1, "n_iter": res.params["sweep_iter"] + res.params["n_iter"],
            "device": res.params["device"], "sweep": res.sweep}


def once(args, cfg, grid, x, y, tr, va, te) -> list[dict]:
    """The slow methods, one run each: the scikit-learn sweep and the Lightning head."""
    rows = []
    if "sklearn-sweep" in args.methods:
        (final, best, n), wall = timed(lambda: sklearn_sweep(x[tr], y[tr], x[va], y[va], grid, cfg.max_iter))
        rows.append({"method": "sklearn-sweep", "wall_s": wall, "walls": [wall], "chosen": f"C={best:.3g}",
                     "fits": n + 1,
                     "test_accuracy": float((final.predict(x[te]) == y[te]).mean())})
    if "linear" in args.methods:
        t0 = time.perf_counter()
        from toolkit.fitting.trainer import fit_linear

        import_s = time.perf_counter() - t0
        fit, wall = timed(lambda: fit_linear(x[tr], y[tr], x[va], y[va], args.classes, cfg))
        epochs = sum(r["best_epoch"] + 1 + cfg.patience for r in fit.sweep)
        rows.append({"method": "linear", "wall_s": wall, "walls": [wall],
                     "chosen": f"weight_decay={fit.params['weight_decay']:g}",
                     "test_accuracy": accuracy(fit.coef, fit.intercept, x[te], y[te]), "fits": len(fit.sweep),
                     "epochs_about": epochs, "import_lightning_s": import_s, "precision": fit.params["precision"]})
    return rows


LABELS = {"sklearn-default": "scikit-learn `LogisticRegression()` (C=1, on train+val)",
          "sklearn-sweep": "the same sweep in scikit-learn (warm-started, cold refit): `logreg` before issue 15",
          "linear": "`linear`: Lightning, AdamW, 5 weight decays, early stopping"}


def label(name: str, res: dict) -> str:
    if name.startswith("logreg"):
        threads = name.split(", ")[1]
        return (f"`logreg` (torch L-BFGS, {threads}): C sweep 1e-6..1e6 ({res['c_steps']}) + 3 refinement rounds, "
                "refit on train+val")
    return LABELS.get(name, name)


def markdown(res: dict) -> str:
    rows = {r["method"]: r for r in res["rows"]}
    split = res["split"]
    lines = [SECTION.format(**res), "", "```",
             ".venv/bin/python scripts/bench_probe.py --threads 1 2 --write   # --n 50000 --dim 512 --classes 10",
             "```", "",
             "Synthetic, learnable features: class means on the unit sphere plus isotropic noise (norm "
             f"{res['noise']:g}x the mean's),",
             "renormalized, the shape of CLIP ViT-B/32 features. 70 / 15 / 15 split "
             f"(train {split['train']:,}, val {split['val']:,}, test {split['test']:,}).",
             "All methods fit the same arrays in one run: scikit-learn's default fit and the torch sweeps alternate "
             f"for {res['rounds']} rounds",
             "(median wall time; \"per round\" is each round's ratio to that round's default fit); the "
             "scikit-learn sweep and `linear` run once, after.", "",
             "| method | wall time (s) | x sklearn default | per round | test accuracy | chosen | fits | "
             "L-BFGS iterations |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ratio = f"{r['time_vs_sklearn_default']:.2f}x" if r.get("time_vs_sklearn_default") else "-"
        per = " ".join(f"{v:.2f}" for v in r.get("round_ratios", [])) if name != "sklearn-default" else ""
        fits = f"{r['fits']} (~{r['epochs_about']} epochs)" if "epochs_about" in r else r["fits"]
        lines.append(f"| {label(name, res)} | {r['wall_s']:.1f} | {ratio} | {per or '-'} | "
                     f"{100 * r['test_accuracy']:.2f}% | {r['chosen']} | {fits} | {r.get('n_iter', '-')} |")
    return "\n".join(lines + [""] + notes(res, rows)) + "\n"


def notes(res: dict, rows: dict) -> list[str]:
    out = []
    torch_rows = [r for n, r in rows.items() if n.startswith("logreg")]
    if "sklearn-sweep" in rows and torch_rows:
        ref = rows["sklearn-sweep"]["test_accuracy"]
        gaps = ", ".join(f"{100 * (r['test_accuracy'] - ref):+.2f}" for r in torch_rows)
        out.append(f"- Accuracy: the torch sweep is {gaps} points from the scikit-learn sweep's test accuracy "
                   "(tests/test_logreg.py checks 0.3 points at the same C on small data).")
    device = torch_rows[0]["device"] if torch_rows else "-"
    out += [f"- Time: the torch sweep runs in float32 on device `{device}`, to a tolerance of {res['tol']:g} on the "
            "largest gradient entry of the per-sample objective (scikit-learn's `tol`); "
            "each C starts from the nearest smaller C's solution and L-BFGS memory (C is chosen on at most 20,000 "
            "training rows); the refit starts from the chosen C's and runs to "
            "min(1e-4, 0.2 x the gradient scale at zero weights). "
            f"Not in its time: the first torch fit of a process imports torch._dynamo (torch.optim does), "
            f"{res['first_torch_call_s']:.1f} s here, once.",
            "- Pass `--c-grid 0.01,0.1,1` to `clipkit train-probe` to cut the sweep when you know the range."]
    idle = [f"{r['value']:.3g}" for r in (torch_rows[0]["sweep"] if torch_rows else []) if r["n_iter"] == 0]
    if idle:
        out.append(f"- C = {', '.join(idle)}: 0 iterations, so small that every logit stays below 0.01: these Cs "
                   "take the first-order solution (they all predict alike) instead of a fit.")
    one, two = rows.get("logreg, 1 thread"), rows.get("logreg, 2 threads")
    if one and two:
        out.append(f"- Threads: the sweep on 2 threads took {two['wall_s'] / one['wall_s']:.1f}x the time of 1 thread "
                   "(median; with other jobs on the machine, OpenMP threads spin-wait for a core), so fit_logreg "
                   "fits on one CPU thread, as `linear` does. scikit-learn's default fit runs on both cores, so "
                   "load slows it more than the sweep: on a quieter machine the ratio is higher.")
    if "linear" in rows:
        out.append(f"- `linear` excludes Lightning's import ({rows['linear']['import_lightning_s']:.1f} s here); "
                   "it trains on one torch thread too, with bf16/fp16 mixed precision on a GPU.")
    if device == "cpu":
        out.append("- On a GPU (`device` auto) both run there; not measured here: no GPU was available to this run.")
    out += [f"- Machine: {res['machine']} (load average {res['load_before']} when the run started); other jobs were "
            "running, so absolute times drift: read the ratios."]
    return out


# ---------------------------------------------------------------- --grid: the claim across data we didn't pick

GRID_SECTION = "### The C sweep against one default scikit-learn fit, over a grid of data"


def grid_cell(n: int, dim: int, classes: int, noise: float, seed: int, sk_threads: int, order: int) -> dict:
    """One cell: scikit-learn's default fit (train+val) and the torch sweep (train, val, refit), timed in one
    process, in `order` (0: sklearn first); test accuracy of each on the same held-out 15%."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x, y = synthetic(n, dim, classes, noise, seed)
    n_tr, n_va = int(0.7 * n), int(0.15 * n)
    tr, va, te = slice(0, n_tr), slice(n_tr, n_tr + n_va), slice(n_tr + n_va, None)
    x_fit, y_fit = np.concatenate([x[tr], x[va]]), np.concatenate([y[tr], y[va]])
    grid = log_grid(1e-6, 1e6, 13)

    def sk():
        with threadpool_limits(sk_threads):
            return LogisticRegression().fit(x_fit, y_fit)

    def ours():
        return sweep_c(x[tr], y[tr], x[va], y[va], grid)

    sides = [("sklearn", sk), ("sweep", ours)][::1 if order == 0 else -1]
    out = {}
    for name, fn in sides:
        out[name] = timed(fn)
    (clf, t_sk), (res, t_ours) = out["sklearn"], out["sweep"]
    return {"n": n, "classes": classes, "noise": noise, "seed": seed, "sklearn_s": t_sk, "sweep_s": t_ours,
            "ratio": t_ours / t_sk, "sklearn_acc": float((clf.predict(x[te]) == y[te]).mean()),
            "sweep_acc": accuracy(res.coef, res.intercept, x[te], y[te]), "C": res.params["C"],
            "sklearn_iter": int(clf.n_iter_.max()), "sweep_iter": res.params["sweep_iter"],
            "final_iter": res.params["n_iter"], "fits": res.params["n_candidates"] + 1}


def run_grid(args) -> dict:
    import os

    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    fit_fixed_c(np.eye(4, dtype=np.float32), np.arange(4), 1.0)  # torch.optim's one-off import, outside the timings
    cells = []
    k = 0
    for n in args.grid_n:
        for classes in args.grid_classes:
            for noise in args.grid_noise:
                for seed in args.seeds:
                    cell = grid_cell(n, args.dim, classes, noise, seed, args.sk_threads, k % 2)
                    k += 1
                    cells.append(cell)
                    print(f"n={n} classes={classes} noise={noise:g} seed={seed}: sweep {cell['sweep_s']:.2f} s, "
                          f"sklearn {cell['sklearn_s']:.2f} s -> {cell['ratio']:.2f}x; accuracy "
                          f"{100 * cell['sweep_acc']:.2f}% vs {100 * cell['sklearn_acc']:.2f}%", flush=True)
    return {"cells": cells, "dim": args.dim, "sk_threads": args.sk_threads, "load_before": load,
            "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()), "machine": _bench.machine_note(),
            "command": " ".join(["scripts/bench_probe.py", *os.sys.argv[1:]])}


def grid_markdown(res: dict) -> str:
    cells = res["cells"]
    ratios = [c["ratio"] for c in cells]
    gaps = [100 * (c["sweep_acc"] - c["sklearn_acc"]) for c in cells]
    lines = [GRID_SECTION, "", "```", f".venv/bin/python {res['command']}", "```", "",
             f"Synthetic unit-norm features as above (D = {res['dim']}), every cell of the grid, one process, the two "
             "sides back to back (order alternating from cell to cell). scikit-learn: `LogisticRegression()` "
             f"(C = 1, tol 1e-4, L-BFGS) on train+val, BLAS on {res['sk_threads']} thread(s) (threadpoolctl), the same "
             "count as the sweep's torch: on a shared 2-core machine 2 OpenMP threads spin-wait. Sweep: 13 Cs over "
             "1e-6..1e6 on train (on a fixed 20,000 of its rows past that), chosen on val, 3 refinement rounds, refit "
             "on train+val from the chosen C's weights (what `train-probe` runs). Iterations: the sweep's are over "
             "its rows, the refit's over train+val.", "",
             "| n | classes | noise | seed | sweep (s) | sklearn (s) | sweep / sklearn | test acc sweep | test acc "
             "sklearn | C chosen | fits | sweep + refit iterations | sklearn iterations |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['n']:,} | {c['classes']} | {c['noise']:g} | {c['seed']} | {c['sweep_s']:.2f} | "
                     f"{c['sklearn_s']:.2f} | {c['ratio']:.2f}x | {100 * c['sweep_acc']:.2f}% | "
                     f"{100 * c['sklearn_acc']:.2f}% | {c['C']:.3g} | {c['fits']} | "
                     f"{c['sweep_iter']} + {c['final_iter']} | {c['sklearn_iter']} |")
    worst = max(cells, key=lambda c: c["ratio"])
    lines += ["", f"- Range: the whole sweep took {min(ratios):.2f}x to {max(ratios):.2f}x one default scikit-learn fit "
              f"(median {statistics.median(ratios):.2f}x; slowest cell n={worst['n']:,}, {worst['classes']} classes, "
              f"noise {worst['noise']:g}); test accuracy {min(gaps):+.2f} to {max(gaps):+.2f} points from "
              "scikit-learn's (median "
              f"{statistics.median(gaps):+.2f}).",
              f"- Machine: {res['machine']}; load average {res['load_before']} before, {res['load_after']} after "
              "(other jobs were running: read the ratios, not the seconds)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--noise", type=float, default=8.0,
                    help="noise norm relative to the unit class mean (8: ~87%% accuracy)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--c-steps", type=int, default=13, help="logreg: coarse C grid size over 1e-6..1e6")
    ap.add_argument("--weight-decays", type=float, nargs="+", default=[0.0, 1e-4, 1e-3, 1e-2, 1e-1])
    ap.add_argument("--methods", nargs="+", default=["sklearn-default", "logreg", "sklearn-sweep", "linear"],
                    choices=["sklearn-default", "logreg", "sklearn-sweep", "linear"])
    ap.add_argument("--threads", type=int, nargs="+", default=[CPU_THREADS],
                    help="logreg: CPU thread counts to compare")
    ap.add_argument("--tol", type=float, default=TOL, help="logreg: L-BFGS gradient tolerance")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of sklearn-default and logreg")
    ap.add_argument("--device", default="auto", help="logreg: auto | cpu | cuda")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    ap.add_argument("--grid", action="store_true",
                    help="the sweep vs one default scikit-learn fit over noise x classes x n (and --seeds)")
    ap.add_argument("--grid-noise", type=float, nargs="+", default=[2, 4, 7, 10])
    ap.add_argument("--grid-classes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--grid-n", type=int, nargs="+", default=[5000, 50000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[777])
    ap.add_argument("--sk-threads", type=int, default=CPU_THREADS, help="--grid: scikit-learn's BLAS threads")
    args = ap.parse_args()
    if args.grid:
        res = run_grid(args)
        text = grid_markdown(res)
        print(text)
        _bench.write_json(args.json, res)
        if args.write:
            _bench.write_section(_bench.ROOT / "BENCHMARKS.md", GRID_SECTION, text)
        return
    res = run(args)
    text = markdown(res)
    print(text)
    _bench.write_json(args.json, res)
    if args.write:
        _bench.write_section(_bench.ROOT / "BENCHMARKS.md", SECTION.format(**res), text)


if __name__ == "__main__":
    main()
