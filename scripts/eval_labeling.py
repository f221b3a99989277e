"""What to label next on the demo generator's novel suite: test accuracy of the head against labels used, for the
random, typical, margin and auto strategies of `clipkit suggest` (toolkit.labeling.suggest), over several seeds.

The suite (`clipkit demo-data OUT --suite novel`, its default 13 classes) is generated in memory and encoded once
with the demo model (configs/demo.yaml); per class `--pool` images form the unlabelled pool and `--test` images
the test set. Each run starts with no labels; the strategy picks the next `--step` images from the pool given the
head refitted on every label so far (blended with zero-shot, as the labelling page refits while a person labels),
they are labelled with their true class, and at each budget two heads are scored on test: logistic regression at
labeling.model.C_LABELS on the labels (what `train-probe` makes of the CSV) and the page's head (the same blended
with zero-shot, labeling.model.blend_weight).

    .venv/bin/python scripts/eval_labeling.py                        # a few minutes on 2 cores
    .venv/bin/python scripts/eval_labeling.py --plot docs/labeling_curve.png --write
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _bench import ROOT, machine_note, table, write_section

SECTION = "## What to label next (issue 20)"
STRATEGIES = ("random", "typical", "margin", "auto")


def novel_suite(config: str, pool: int, test: int, seed: int, cache: Path | None = None, keep_images: bool = False):
    """({'pool': (X, y), 'test': (X, y)}, class texts, (n_pool, C) and (n_test, C) zero-shot proba, images or None,
    seconds); y index the class texts. `cache` (.npz) keeps the features between runs (not with keep_images)."""
    from toolkit.config import load_config
    from toolkit.demo import LABELS
    from toolkit.demo.dataset import make_suite, parse_classes
    from toolkit.encoder.features import FeatureExtractor
    from toolkit.heads.prompts import resolve_templates
    from toolkit.heads.zeroshot import ZeroShotHead

    keys = parse_classes("default", "novel")
    texts = [LABELS[k] for k in keys]
    cfg = load_config(config, {"model.device": "cpu"})
    t0 = time.perf_counter()
    if cache and cache.is_file() and not keep_images:
        d = np.load(cache)
        data, images = {s: (d[f"{s}_X"], d[f"{s}_y"]) for s in ("pool", "test")}, None
    else:
        n = pool + test
        splits = make_suite("novel", n, seed, classes=keys, split=(pool / n, 0.0, test / n))
        extractor = FeatureExtractor.from_config(cfg.model)
        data, images = {}, {}
        for name, split in (("pool", "train"), ("test", "test")):
            ims, labels = splits[split]
            data[name] = (extractor.encode_images(ims), np.asarray([texts.index(t) for t in labels]))
            images[name] = ims
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, **{f"{s}_X": v[0] for s, v in data.items()}, **{f"{s}_y": v[1] for s, v in data.items()})
    extractor = FeatureExtractor.from_config(cfg.model)
    zs = ZeroShotHead.from_extractor(extractor, texts, resolve_templates(cfg.prompts))
    proba = {s: zs.predict_proba(data[s][0]) for s in data}
    return data, texts, proba, images if keep_images else None, time.perf_counter() - t0


def run(data, n_classes: int, zs: dict, strategy: str, budgets: list[int], seed: int,
        step: int) -> tuple[list[float], list[float]]:
    """Test accuracy (%) at each budget for one strategy and seed: (logistic regression on the labels, the head
    the page serves: that logistic regression blended with zero-shot). Picks come `step` at a time, each batch
    given the head refitted on every label so far, as the page refits while a person labels."""
    from toolkit.labeling.model import TorchLogReg, blend_weight, current_proba
    from toolkit.labeling.suggest import pick

    (X, y), (X_test, y_test) = data["pool"], data["test"]
    labelled: dict[int, int] = {}
    head_acc, page_acc = [], []
    for b in budgets:
        while len(labelled) < b:
            rows = np.fromiter(labelled.keys(), int, len(labelled))
            proba = current_proba(X[rows], y[rows], X, n_classes, zs["pool"])
            for r in pick(X, labelled, min(step, b - len(labelled)), strategy, proba, n_classes, seed):
                labelled[r] = int(y[r])
        rows = np.fromiter(labelled.keys(), int, len(labelled))
        if len(np.unique(y[rows])) < 2:
            head = np.full((len(y_test), n_classes), 1.0 / n_classes)
        else:
            head = TorchLogReg(n_classes=n_classes).fit(X[rows], y[rows]).full_proba(X_test)
        w = blend_weight(len(rows), n_classes)
        head_acc.append(100.0 * float((head.argmax(axis=1) == y_test).mean()))
        page_acc.append(100.0 * float(((w * head + (1 - w) * zs["test"]).argmax(axis=1) == y_test).mean()))
    return head_acc, page_acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--pool", type=int, default=42, help="unlabelled pool images per class")
    ap.add_argument("--test", type=int, default=18, help="test images per class")
    ap.add_argument("--budgets", type=int, nargs="+", default=[9, 18, 36, 72, 144])
    ap.add_argument("--seeds", type=int, default=5, help="strategy seeds 0..seeds-1")
    ap.add_argument("--step", type=int, default=9, help="labels between two refits of the head")
    ap.add_argument("--gen-seed", type=int, default=0, help="generation seed of the images")
    ap.add_argument("--cache", type=Path, default=ROOT / "out" / "eval_labeling_features.npz")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = ap.parse_args()
    data, texts, proba, _, load_s = novel_suite(args.config, args.pool, args.test, args.gen_seed, args.cache)
    C = len(texts)
    t0 = time.perf_counter()
    runs = {s: np.array([run(data, C, proba, s, args.budgets, seed, args.step) for seed in range(args.seeds)])
            for s in STRATEGIES}  # (seeds, 2, budgets): logistic regression, the page's blended head
    acc, page = {s: r[:, 0] for s, r in runs.items()}, {s: r[:, 1] for s, r in runs.items()}
    run_s = time.perf_counter() - t0
    zs_acc = 100.0 * float((proba["test"].argmax(axis=1) == data["test"][1]).mean())
    res = {"budgets": args.budgets, "seeds": args.seeds, "classes": texts, "zeroshot": zs_acc,
           "accuracy": {s: a.tolist() for s, a in acc.items()},
           "page_accuracy": {s: a.tolist() for s, a in page.items()}, "step": args.step, "n_pool": len(data["pool"][1]),
           "n_test": len(data["test"][1]), "load_s": load_s, "run_s": run_s}
    text = report(res, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if args.plot:
        from toolkit.evaluation.plots import curve_png

        series = {s: (args.budgets, a.mean(axis=0).tolist()) for s, a in acc.items()}
        series["zero-shot"] = (args.budgets, [zs_acc] * len(args.budgets))
        curve_png(series, args.plot, f"novel suite ({C} classes): test accuracy against labels, mean of "
                  f"{args.seeds} seeds", "labels", "test accuracy (%)", logx=True,
                  errors={s: a.std(axis=0, ddof=1).tolist() for s, a in acc.items()})
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", SECTION, text)


def goals(acc: dict, budgets: list[int], seeds: int) -> tuple[float, list[int], list[int], list[float]]:
    """(random's mean at the last budget, budgets where auto's mean reaches it, budgets where auto is worse than
    random beyond the noise, the noise per budget: 2 standard errors of the difference of the two means)."""
    target = acc["random"][:, -1].mean()
    reach = [b for i, b in enumerate(budgets) if acc["auto"][:, i].mean() >= target]
    noise = [2 * np.sqrt((acc["auto"][:, i].var(ddof=1) + acc["random"][:, i].var(ddof=1)) / seeds)
             for i in range(len(budgets))]
    worse = [b for i, b in enumerate(budgets) if acc["auto"][:, i].mean() < acc["random"][:, i].mean() - noise[i]]
    return target, reach, worse, noise


def verdicts(acc: dict, budgets: list[int], seeds: int) -> list[str]:
    target, reach, worse, noise = goals(acc, budgets, seeds)
    diff = ", ".join(f"{b}: {acc['auto'][:, i].mean() - acc['random'][:, i].mean():+.1f} (noise {noise[i]:.1f})"
                     for i, b in enumerate(budgets))
    return [
        f"- Goal 1, auto reaches random's accuracy at {budgets[-1]} labels ({target:.1f}%) with 72 or fewer: "
        + (f"met at {reach[0]} labels." if reach and reach[0] <= 72 else
           (f"not met (auto reaches it at {reach[0]})." if reach else "not met within the budgets.")),
        "- Goal 2, auto never worse than random beyond the noise (2 standard errors of the difference of the means, "
        "std over seeds with ddof 1): " + ("met at every budget" if not worse else
                                           f"not met at {', '.join(map(str, worse))} labels")
        + f". auto - random, points: {diff}.",
    ]


def report(res: dict, args) -> str:
    from toolkit.labeling.suggest import MARGIN_POOL

    budgets, seeds = res["budgets"], res["seeds"]
    acc = {s: np.asarray(v) for s, v in res["accuracy"].items()}
    page = {s: np.asarray(v) for s, v in res["page_accuracy"].items()}

    def rows(a: dict) -> list[list[str]]:
        return [[s, *[f"{a[s][:, i].mean():.1f} +- {a[s][:, i].std(ddof=1):.1f}" for i in range(len(budgets))]]
                for s in STRATEGIES]

    head = ["strategy", *[f"{b} labels" for b in budgets]]
    cmd = ".venv/bin/python scripts/eval_labeling.py --plot docs/labeling_curve.png --write"
    return "\n".join([
        SECTION, "", "```", cmd, "```", "",
        f"The novel suite (13 classes, the demo model's 6 exercises next to 7 it never saw, shifted style), generation "
        f"seed {args.gen_seed}: a pool of {res['n_pool']} unlabelled images ({args.pool} per class) and "
        f"{res['n_test']} test images ({args.test} per class). Every run starts with no labels; the strategy picks "
        f"{res['step']} images at a time given the head refitted on all labels so far (blended with zero-shot, as "
        "the page refits while a person labels), they get their true labels, and at each budget two heads are "
        "scored on test: logistic regression (C = 30) on the labels (what `train-probe` makes of the CSV), and the "
        "head the page serves (that regression blended with zero-shot, weight n / (n + 2 x classes)). Test accuracy "
        f"in %, mean +- std over {seeds} seeds; zero-shot {res['zeroshot']:.1f}%. Features loaded in "
        f"{res['load_s']:.0f} s, all runs in {res['run_s']:.0f} s; {machine_note()} (the machine was shared with "
        "other jobs: times are loose, accuracies are not).", "",
        "Logistic regression on the labels:", "",
        table(head, rows(acc)), "",
        "![accuracy against labels](docs/labeling_curve.png)", "",
        *verdicts(acc, budgets, seeds), "",
        "The page's head (logistic regression blended with zero-shot):", "",
        table(head, rows(page)), "",
        *verdicts(page, budgets, seeds), "",
        "auto = typical (TypiClust) picks until there is one label per class, then margin picks kept diverse: "
        f"the {MARGIN_POOL} x batch lowest margins clustered into batch groups (KMeans), the lowest margin of "
        "each. Measured on the way here: a wider margin pool (10 x batch) and picking all of a budget's images "
        "from one head (batches of 9, 9, 18, 36, 72 labels) left auto at 48.6% with 72 labels against random's 52.4% "
        "at 144 (3 seeds). Goal 1 stays out of reach: auto saves labels (5-10 points over random from 9 to 72 "
        "labels on the regression) but random gains 13 points from 72 to 144 labels, more than any order of the "
        "first 72 adds, and random's mean at 144 moves by +-4 points from seed to seed. Tried on the way and not "
        "kept (none clearly closer: worse, or within the seed noise): label spreading over the pool as the "
        "head, class-balanced margin picks, half typical and half margin in every batch, typical picks until two "
        "labels per class. On the page's head, "
        "zero-shot's own margin is the better cold start (the margin row at 9-18 labels), but it is the worst "
        "start for the regression `train-probe` makes, so auto keeps typical picks.",
        "",
    ])


if __name__ == "__main__":
    main()
