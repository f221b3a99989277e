"""Is a demo suite a useful benchmark? Zero-shot vs a few-shot linear probe with the demo model.

    .venv/bin/python scripts/suite_check.py --seeds 0 1            # the novel suite, shifted style
    .venv/bin/python scripts/suite_check.py --suite main --style plain --seeds 0

For each seed the suite is generated in memory (``toolkit.demo.dataset.make_suite``), encoded with
configs/demo.yaml's model, and scored on its test split by: zero-shot with the label texts as labels
(templates 'people', and the bare label '{}'); scikit-learn LogisticRegression on K shots per class
drawn from train (C chosen on val from a small grid; mean over --draws draws), and on all of train.
--per-class prints the zero-shot recall of each class (what to tune).
"""
from __future__ import annotations

import argparse

import numpy as np
from _bench import ROOT

C_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)


def fit_probe(x_train, y_train, x_val, y_val):
    """LogisticRegression with C picked on val (refit on train); returns the fitted model."""
    from sklearn.linear_model import LogisticRegression

    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
        score = model.score(x_val, y_val)
        if best is None or score > best[0]:
            best = (score, model)
    return best[1]


def shots(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``k`` random examples of every class in ``y``."""
    return np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in np.unique(y)])


def check(extractor, args, seed: int) -> dict:
    from toolkit.demo.dataset import make_suite, parse_classes
    from toolkit.heads.prompts import builtin_templates
    from toolkit.heads.zeroshot import ZeroShotHead

    data = make_suite(args.suite, args.n_per_class, seed, size=args.size, style=args.style,
                      classes=parse_classes(args.classes or "default", args.suite))
    labels = list(dict.fromkeys(data["train"][1]))
    feats = {s: extractor.encode_images(images) for s, (images, _) in data.items()}
    ys = {s: np.array([labels.index(t) for t in texts]) for s, (_, texts) in data.items()}
    out = {}
    for name, templates in (("zeroshot", builtin_templates("people")), ("zeroshot_bare", ["{}"])):
        head = ZeroShotHead.from_extractor(extractor, labels, templates)
        pred = head.predict_proba(feats["test"]).argmax(axis=1)
        out[name] = float((pred == ys["test"]).mean())
        if name == "zeroshot":
            recall = {t: float((pred[ys["test"] == i] == i).mean()) for i, t in enumerate(labels)}
    rng = np.random.default_rng([seed, 16])
    accs = []
    for _ in range(args.draws):
        idx = shots(ys["train"], args.shots, rng)
        model = fit_probe(feats["train"][idx], ys["train"][idx], feats["val"], ys["val"])
        accs.append(model.score(feats["test"], ys["test"]))
    out[f"probe_{args.shots}shot"] = float(np.mean(accs))
    out["probe_all"] = float(fit_probe(feats["train"], ys["train"], feats["val"], ys["val"])
                             .score(feats["test"], ys["test"]))
    out["n_test"], out["classes"], out["recall"] = len(ys["test"]), len(labels), recall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="novel", choices=("main", "novel"))
    ap.add_argument("--style", default=None, choices=("plain", "shifted"), help="Default: the suite's.")
    ap.add_argument("--classes", default=None, help="Comma-separated class keys, 'default' (the suite's) or 'all'.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--n-per-class", type=int, default=100, help="Split 70/15/15 into train/val/test.")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--per-class", action="store_true", help="Print each class's zero-shot recall.")
    args = ap.parse_args()

    from toolkit.config import load_config
    from toolkit.encoder.features import FeatureExtractor

    cfg = load_config(ROOT / "configs" / "demo.yaml", {"model.device": "cpu"})
    extractor = FeatureExtractor.from_config(cfg.model)
    print(f"suite {args.suite}, style {args.style or 'default'}, {args.n_per_class}/class, {args.size} px")
    print(f"| seed | classes | test images | zero-shot (people) | zero-shot ('{{}}') | probe {args.shots}-shot "
          f"(mean of {args.draws}) | probe all train |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        r = check(extractor, args, seed)
        print(f"| {seed} | {r['classes']} | {r['n_test']} | {r['zeroshot']:.3f} | {r['zeroshot_bare']:.3f} "
              f"| {r[f'probe_{args.shots}shot']:.3f} | {r['probe_all']:.3f} |", flush=True)
        if args.per_class:
            for label, rec in r["recall"].items():
                print(f"    {rec:.2f}  {label}")


if __name__ == "__main__":
    main()
