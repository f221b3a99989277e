"""The held-out-class pick (issue 22) on known sets it was not tuned on: random known sets of the novel suite.

The pick rule of toolkit.fitting.openset (k at most the smallest class's image count, then the one-standard-error
rule: the smoothest setting within one standard error of the best held-out AUROC) was chosen after seeing its test
gaps on the two known sets of scripts/eval_openset.py (9 and 6 known). This script checks it on other known sets:
`--sets` random known sets of each size in `--sizes` (seeded), drawn from the suite's 15 classes (the rest
unknown), at K=16 (seed 0) and all train. For each it compares, on known test vs unknown images, the best test
AUROC of every feature-only setting (kNN, (relative) Mahalanobis, the sums, k 1-70 and the cap), the new pick, and
the old one (the argmax of the held-out AUROC among kNN and kNN + Mahalanobis at k 1-70), and the argmax among
the new pick's settings (kNN and both sums, every k: what the rule alone changes). Only features are used
(no head is fitted), from the `--features` file eval_openset.py keeps.

    .venv/bin/python scripts/eval_openset_pick.py --features out/novel_features.npz
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OLD_CHOICE, OLD_KS = ("knn", "combined"), (1, 5, 10, 20, 30, 50, 70)
KINDS = ("knn", "combined", "combined_rel", "mahalanobis", "relmahalanobis")


def one(data: dict, known: list[str], shots: str, seed: int = 0) -> dict:
    """{best, new, old, argmax} and their {...}_name: test AUROCs for one known set and setting."""
    from eval_openset import split_known
    from toolkit.fitting.openset import (DEFAULT_CHOICE, KNN_KS, auroc, build_detector, candidates, fit_openset, k_cap,
                                         with_cap)
    from toolkit.fitting.probe import fewshot_indices

    split, (X_u, _) = split_known(data, known)
    X_tr, y_tr = split["train"]
    rows = np.arange(len(y_tr)) if shots == "all" else fewshot_indices(np.arange(len(y_tr)), y_tr, int(shots), seed)
    X_tr, y_tr = X_tr[rows], y_tr[rows]
    fit = fit_openset(X_tr, y_tr, *split["val"], known, kinds=KINDS, seed=seed)
    test, cache = {}, {}
    for cand in candidates(KINDS, False, False, False, with_cap(KNN_KS, k_cap(y_tr))):
        det = build_detector(cand, X_tr, y_tr, len(known), None, None, split["val"][0], seed, cache)
        test[cand.name] = auroc(det.score(split["test"][0]), det.score(X_u))
    old = max((n for n in fit.candidates if n.split("(")[0] in OLD_CHOICE and
               int(n.split("=")[1][:-1]) in OLD_KS), key=lambda n: fit.candidates[n]["auroc"])
    argmax = max((n for n in fit.candidates if n.split("(")[0] in DEFAULT_CHOICE),
                 key=lambda n: fit.candidates[n]["auroc"])
    best = max(test, key=test.get)
    return {"best": test[best], "best_name": best, "new": test[fit.chosen], "new_name": fit.chosen,
            "old": test[old], "old_name": old, "argmax": test[argmax], "argmax_name": argmax}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", type=Path, required=True, help="the .npz eval_openset.py --features keeps")
    ap.add_argument("--sizes", type=int, nargs="+", default=[9, 6])
    ap.add_argument("--sets", type=int, default=4, help="random known sets per size")
    ap.add_argument("--seed", type=int, default=1, help="the draw of the known sets")
    args = ap.parse_args()
    z = np.load(args.features)
    data = {s: (z[f"{s}_X"], z[f"{s}_k"].tolist()) for s in ("train", "val", "test")}
    classes = sorted(set(data["train"][1]))
    rng = np.random.default_rng(args.seed)
    print("| known | setting | best test AUROC (setting) | new pick: AUROC, gap | old pick: AUROC, gap | argmax of "
          "the new pick's settings: AUROC, gap |")
    print("|---|---|---|---|---|---|")
    gaps = {"new": [], "old": [], "argmax": []}
    for size in args.sizes:
        for _ in range(args.sets):
            known = [classes[i] for i in np.sort(rng.choice(len(classes), size, replace=False))]
            for shots in ("16", "all"):
                r = one(data, known, shots)
                for side in gaps:
                    gaps[side].append(r["best"] - r[side])
                print(f"| {size}: {', '.join(known)} | {'K=16' if shots == '16' else 'all train'} | "
                      f"{r['best']:.3f} ({r['best_name']}) | {r['new_name']} {r['new']:.3f}, "
                      f"{r['best'] - r['new']:.3f} | {r['old_name']} {r['old']:.3f}, {r['best'] - r['old']:.3f} | "
                      f"{r['argmax_name']} {r['argmax']:.3f}, {r['best'] - r['argmax']:.3f} |",
                      flush=True)
    for side, g in gaps.items():
        g = np.asarray(g)
        print(f"{side} pick: mean gap {g.mean():.3f}, median {np.median(g):.3f}, largest {g.max():.3f}, "
              f"within 0.03 in {(g <= 0.03).sum()} of {len(g)}")


if __name__ == "__main__":
    main()
